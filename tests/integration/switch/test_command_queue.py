"""The command queue against the database, SQLite and PostgreSQL (no meters: commands are claimed, not sent).

A claim and the outcomes recorded with it share one transaction; two queues (two platform processes)
claiming at the same moment must still never both take the same command. A waiter in the process that
submitted a command learns its final status from that process's queue, and still learns it when
another process finished it. Outcomes gather for the next look; a new command is claimed at once.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import commands as repo
from openami.db import tables as t
from openami.db.commands import CommandRow
from openami.services import switch, switch_queue
from openami.services.switch import CommandRequest
from openami.services.switch_queue import CommandQueue
from openami.settings import GuardSettings
from tests.integration.guard.helpers import Clock, Grid, build_grid, operator, platform_on

ALICE = operator("alice")
OPEN_GUARD = GuardSettings(max_disconnects_area=1000, max_disconnects_fleet=1000, approval_batch_size=1000)


@pytest.fixture
def grid(engine: Engine) -> Grid:
    return build_grid(engine, per_area=8)


def test_two_queues_claiming_at_once_never_take_the_same_command(engine: Engine, tmp_path: Path, grid: Grid) -> None:
    clock = Clock()
    platforms = [platform_on(engine, tmp_path / name, OPEN_GUARD, clock) for name in ("one", "two")]
    meters = grid.s1 + grid.s2
    for meter_id in meters:  # two commands per meter (a limit, then a disconnect): one per meter per claim
        limit = switch.LimitParameters(threshold_w=5_000, duration_s=60)
        switch.submit(platforms[0], ALICE, CommandRequest(meter_id, "limit", limit=limit))
        switch.submit(platforms[0], ALICE, CommandRequest(meter_id, "disconnect"))
    queues = [CommandQueue(p) for p in platforms]
    claimed: list[list[CommandRow]] = [[], []]
    start = threading.Barrier(2)

    def claim(i: int) -> None:
        start.wait()
        rows, views, _left = queues[i]._write([], 100, frozenset(), queues[i]._platform.collector.counters.mark())
        assert views == []
        claimed[i] = [row for row, _reserved in rows]

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ids = [row.id for rows in claimed for row in rows]
    assert len(ids) == len(set(ids)), "a command was handed to both queues"
    assert all(row.status == "sent" and row.attempts == 1 for rows in claimed for row in rows)
    for rows in claimed:  # each queue: one command per meter, the meter's first (its limit, the lower counter)
        assert len({row.meter_id for row in rows}) == len(rows)
        assert all(row.command == "limit" for row in rows)
    with engine.connect() as conn:
        sent = conn.execute(sa.select(t.switch_commands.c.id).where(t.switch_commands.c.status == "sent")).scalars()
        assert sorted(sent) == sorted(ids)
        audited = sa.select(sa.func.count()).where(t.audit_log.c.action == "switch.status")
        assert conn.execute(audited).scalar_one() == len(ids)  # one "sent" transition audited per command
    for queue in queues:
        queue._pool.shutdown()


async def test_wait_for_learns_a_final_status_another_process_recorded(
    engine: Engine, tmp_path: Path, grid: Grid
) -> None:
    clock = Clock()
    here = platform_on(engine, tmp_path / "here", OPEN_GUARD, clock)
    elsewhere = platform_on(engine, tmp_path / "elsewhere", OPEN_GUARD, clock)  # no queue of its own
    switch.start_queue(here)
    try:
        later = clock() + timedelta(minutes=5)  # not due: this process's queue leaves it alone
        view = switch.submit(here, ALICE, CommandRequest(grid.s1[0], "reconnect", execute_at=later))
        assert here.commands is not None
        assert here.commands.in_flight_here(view.id)
        switch.cancel_command(elsewhere, ALICE, view.id, reason="cancelled by another process")
        done = await switch.wait_for(here, view.id, 20)
        assert done.status == "cancelled"
        assert done.failure_reason == "cancelled by another process"
        assert not here.commands.in_flight_here(view.id)
    finally:
        await switch.stop_queue(here)


def test_a_submission_answers_the_command_as_stored(engine: Engine, tmp_path: Path, grid: Grid) -> None:
    """The insert returns only what the database fills in; the rest of the answer is what was written."""
    platform = platform_on(engine, tmp_path, OPEN_GUARD, Clock())
    limit = switch.LimitParameters(threshold_w=4_000, duration_s=30, emergency=True)
    submitted = [
        switch.submit(platform, ALICE, CommandRequest(grid.s1[0], "limit", limit=limit, reason="peak", priority=7)),
        switch.submit(platform, ALICE, CommandRequest(grid.s1[1], "disconnect", purpose="safety")),
    ]
    with engine.connect() as conn:
        for view in submitted:
            assert switch._view(repo.get_command(conn, view.id)) == view
            assert view.created_at.utcoffset() == timedelta(0)  # in UTC, as it reads back


async def test_a_new_command_is_claimed_at_once_not_when_the_outcomes_window_closes(
    engine: Engine, tmp_path: Path, grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each look the queue lets outcomes gather for the next one (``_COALESCE_S``); a command
    submitted meanwhile does not wait for that: with a window of 10 minutes, both commands (each
    submitted just after a look) are claimed long before it closes."""
    monkeypatch.setattr(switch_queue, "_COALESCE_S", 600.0)
    platform = platform_on(engine, tmp_path, OPEN_GUARD, Clock())
    switch.start_queue(platform)
    try:
        for meter_id in grid.s1[:2]:
            view = switch.submit(platform, ALICE, CommandRequest(meter_id, "reconnect"))
            await _until_claimed(engine, view.id, within_s=60)
    finally:
        await switch.stop_queue(platform)


async def _until_claimed(engine: Engine, command_id: int, *, within_s: float) -> None:
    c = t.switch_commands.c
    query = sa.select(c.attempts).where(c.id == command_id)
    for _ in range(int(within_s / 0.05)):
        with engine.connect() as conn:
            if conn.execute(query).scalar_one() > 0:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"command {command_id} was not claimed within {within_s} s")
