"""The off-switch guard on SQLite and PostgreSQL: rate limits, the two-person rule, ignore-disconnects mode,
uncommanded openings. The platform is not started: commands stay queued in the database, which is all
the guard decides about."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.bus.topics import COMMANDS_CHANGED
from openami.db import tables as t
from openami.domain.commands import CommandChanged
from openami.domain.meter_events import EventCode, MeterEvent, MeterEvents
from openami.errors import Conflict, PermissionDenied
from openami.services import switch, switch_guard
from openami.services.context import Platform
from openami.services.switch import CommandRequest
from openami.services.switch_guard import GuardRefused, IgnoringDisconnects, SameApprover
from openami.settings import GuardSettings
from tests.integration.guard.helpers import SECURITY, Clock, Grid, build_grid, operator, platform_on

ALICE, BOB = operator("alice"), operator("bob")


def _disconnect(platform: Platform, meter_ids: list[int], scope: object = ALICE) -> list[switch.CommandView]:
    requests = [CommandRequest(meter_id=m, command="disconnect", reason="test") for m in meter_ids]
    return switch.submit_batch(platform, scope, requests)  # type: ignore[arg-type]


def _count(engine: Engine, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


def _denials(engine: Engine, action: str) -> list[str]:
    al = t.audit_log.c
    query = sa.select(al.details).where(al.action == action, al.outcome == "denied").order_by(al.seq)
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


@pytest.fixture
def grid(engine: Engine) -> Grid:
    return build_grid(engine)


def test_rate_limits_per_area_and_fleet_wide_refuse_audited_and_slide(
    engine: Engine, tmp_path: Path, grid: Grid
) -> None:
    clock = Clock()
    guard = GuardSettings(max_disconnects_area=3, max_disconnects_fleet=5, rate_window_s=600, approval_batch_size=100)
    platform = platform_on(engine, tmp_path, guard, clock)
    for meter_id in grid.s1[:3]:
        assert _disconnect(platform, [meter_id])[0].status == "queued"
    with pytest.raises(GuardRefused, match="area S1 limit of 3") as refused:
        _disconnect(platform, [grid.s1[3]])
    assert refused.value.http_status == 429
    assert refused.value.code == "guard-refused"
    assert _disconnect(platform, grid.s2[:2])[0].status == "queued"  # S2: 2 of 3, fleet: 5 of 5
    with pytest.raises(GuardRefused, match="fleet-wide limit of 5"):
        _disconnect(platform, [grid.s2[2]])
    # nothing half-written: the refused commands left no row; each refusal audited and a security event
    assert _count(engine, t.switch_commands) == 5
    assert len(_denials(engine, "switch.disconnect")) == 2
    assert _count(engine, t.security_events, t.security_events.c.kind == "guard.refused") == 2
    clock.advance(601)  # the window slides on
    assert _disconnect(platform, [grid.s1[3]])[0].status == "queued"


def test_two_person_rule_same_person_refused_different_person_queues(
    engine: Engine, tmp_path: Path, grid: Grid
) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(approval_batch_size=3), Clock())
    held = _disconnect(platform, grid.s2[:4])
    assert {v.status for v in held} == {"awaiting-approval"}
    batch_id = held[0].batch_id
    assert batch_id is not None
    pending = switch_guard.list_batches(engine, SECURITY, state="awaiting-approval", now=platform.now())
    assert [(b.id, b.command, len(b.meter_ids), b.requested_by) for b in pending] == [
        (batch_id, "disconnect", 4, "user:alice")
    ]
    assert _disconnect(platform, grid.s2[4:5])[0].status == "queued"  # a small batch is not held

    with pytest.raises(SameApprover, match="two-person rule") as same:
        switch_guard.approve(engine, ALICE, batch_id, now=platform.now())
    assert isinstance(same.value, PermissionDenied)
    assert "may not approve" in _denials(engine, "commands.approve")[0]
    assert _count(engine, t.switch_commands, t.switch_commands.c.status == "awaiting-approval") == 4

    approved = switch_guard.approve(engine, BOB, batch_id, now=platform.now())
    assert (approved.state, approved.decided_by) == ("approved", "user:bob")
    views = switch.list_commands(platform, BOB, batch_id=batch_id)
    assert {v.status for v in views} == {"queued"}
    assert _count(engine, t.guard_disconnects, t.guard_disconnects.c.batch_id == batch_id) == 4
    with pytest.raises(Conflict, match="not awaiting approval"):
        switch_guard.approve(engine, BOB, batch_id, now=platform.now())

    rejected_batch = _disconnect(platform, grid.s1[1:5])[0].batch_id
    assert rejected_batch is not None
    rejected = switch_guard.reject(engine, BOB, rejected_batch, reason="not planned", now=platform.now())
    assert rejected.state == "rejected"
    statuses = {v.status for v in switch.list_commands(platform, BOB, batch_id=rejected_batch)}
    assert statuses == {"cancelled"}


async def test_a_rejected_batch_cancels_each_command_audited_and_published(
    engine: Engine, tmp_path: Path, grid: Grid
) -> None:
    """Each command of a rejected batch is cancelled as a status change of its own: audited, and on
    ``COMMANDS_CHANGED`` (an OMS or a waiter learns of it), as an approval's release is."""
    platform = platform_on(engine, tmp_path, GuardSettings(approval_batch_size=3), Clock())
    changes: list[CommandChanged] = []

    async def note(message: CommandChanged) -> None:
        changes.append(message)

    unsubscribe = platform.bus.subscribe(COMMANDS_CHANGED, note)
    switch.start_queue(platform)
    try:
        held = _disconnect(platform, grid.s1[1:5])
        batch_id = held[0].batch_id
        assert batch_id is not None
        rejected = switch_guard.reject_batch(platform, BOB, batch_id, reason="not planned")
        assert rejected.state == "rejected"
        for view in held:
            done = await switch.wait_for(platform, view.id, 20)
            assert (done.status, done.failure_reason) == ("cancelled", "batch rejected: not planned")
        await platform.bus.drain()
    finally:
        await switch.stop_queue(platform)
        unsubscribe()
    cancelled = {(c.command_id, c.batch_id) for c in changes if c.status == "cancelled"}
    assert cancelled == {(view.id, batch_id) for view in held}
    al = t.audit_log.c
    query = sa.select(al.details, al.actor).where(al.action == "switch.status").order_by(al.seq)
    with engine.connect() as conn:
        audited = [(d, a) for d, a in conn.execute(query) if json.loads(d)["status"] == "cancelled"]
    assert len(audited) == len(held)
    assert {actor for _, actor in audited} == {"user:bob"}


def test_ignore_disconnects_mode_refuses_disconnects_until_a_security_admin_clears_it(
    engine: Engine, tmp_path: Path, grid: Grid
) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(), Clock())
    assert switch_guard.ignore_disconnects(platform, ALICE, "S1", reason="storm crews on site", now=platform.now()) == 6
    mode_on = t.switch_commands.c.command == "ignore-on"
    assert _count(engine, t.switch_commands, mode_on, t.switch_commands.c.status == "queued") == 6
    with pytest.raises(IgnoringDisconnects, match="S1 is in ignore-disconnects mode") as refused:
        _disconnect(platform, [grid.s1[2]])
    assert refused.value.http_status == 409
    assert _disconnect(platform, [grid.s2[0]])[0].status == "queued"  # another area is not affected
    with pytest.raises(PermissionDenied):
        switch_guard.clear(platform, ALICE, "S1", now=platform.now())  # guard.clear: security admin only
    assert switch_guard.clear(platform, SECURITY, "S1", now=platform.now()) == 6
    assert _count(engine, t.switch_commands, t.switch_commands.c.command == "ignore-off") == 6
    assert _disconnect(platform, [grid.s1[2]])[0].status == "queued"
    with pytest.raises(Conflict):
        switch_guard.clear(platform, SECURITY, "S1", now=platform.now())


def _opening(meter_id: int, at: int, value: float | None) -> MeterEvent:
    return MeterEvent(meter_id, EventCode.SWITCH_OPENED, at, float(at), "push", value)


async def test_uncommanded_openings_in_one_area_raise_an_alarm_and_the_ignore_mode(
    engine: Engine, tmp_path: Path, grid: Grid
) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(uncommanded_threshold=3, uncommanded_window_s=600), Clock())
    commanded = _disconnect(platform, [grid.s1[0]])[0]
    t0 = int(platform.now().timestamp())
    batch = MeterEvents((
        _opening(grid.s1[0], t0, float(commanded.counter)),  # explained by its own disconnect
        _opening(grid.s1[1], t0, None),  # no command
        _opening(grid.s1[2], t0, float(commanded.counter)),  # another meter's counter explains nothing
        _opening(grid.s2[0], t0, None),  # another area: one opening only
    ))  # fmt: skip
    detector = switch_guard.UncommandedOpeningDetector(platform)
    await detector.handle(batch)
    assert detector.alarms_opened == 0  # two unexplained openings in S1: under the threshold
    await detector.handle(batch)  # delivered again (at least once): counted once
    assert _count(engine, t.guard_openings) == 4
    await detector.handle(MeterEvents((_opening(grid.s1[3], t0 + 5, 424242.0),)))  # an unknown counter
    assert detector.alarms_opened == 1

    alarms = switch_guard.list_alarms(engine, SECURITY, state="open", now=platform.now())
    assert [(a.area, a.openings, a.ignore_disconnects_sent) for a in alarms] == [("S1", 3, True)]
    _, meters = switch_guard.get_alarm(engine, SECURITY, alarms[0].id, now=platform.now())
    assert sorted(meters) == sorted(grid.s1[1:4])
    assert _count(engine, t.security_events, t.security_events.c.kind == "guard.uncommanded-openings") == 1
    assert _count(engine, t.security_events, t.security_events.c.kind == "meter.uncommanded-opening") == 4
    assert _count(engine, t.switch_commands, t.switch_commands.c.command == "ignore-on") == 6
    with pytest.raises(IgnoringDisconnects):
        _disconnect(platform, [grid.s1[4]])

    await detector.handle(MeterEvents((_opening(grid.s1[4], t0 + 9, None),)))  # joins the open alarm
    assert switch_guard.get_alarm(engine, SECURITY, alarms[0].id, now=platform.now())[0].openings == 4
    switch_guard.clear(platform, SECURITY, "S1", now=platform.now())
    cleared = switch_guard.get_alarm(engine, SECURITY, alarms[0].id, now=platform.now())[0]
    assert (cleared.state, cleared.cleared_by) == ("cleared", "user:sec")
    modes = switch_guard.area_modes(engine, SECURITY, now=platform.now())
    assert [(m.area, m.ignore_disconnects) for m in modes] == [("S1", False)]


def test_concurrent_batches_cannot_both_slip_under_a_rate_limit(engine: Engine, tmp_path: Path, grid: Grid) -> None:
    guard = GuardSettings(max_disconnects_area=4, approval_batch_size=100)
    platform = platform_on(engine, tmp_path, guard, Clock())
    switch.ensure_authority(platform)  # created once, before the race
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def submit(meter_ids: list[int], scope: object) -> None:
        barrier.wait()
        try:
            _disconnect(platform, meter_ids, scope)
            outcomes.append("queued")
        except GuardRefused:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit, args=(grid.s1[:3], ALICE)),
               threading.Thread(target=submit, args=(grid.s1[3:6], BOB))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["queued", "refused"]
    assert _count(engine, t.guard_disconnects) == 3
    assert _count(engine, t.switch_commands) == 3
    assert (
        len(_denials(engine, "switch.disconnect"))
        + _count(  # audited, by the guard or after the rollback
            engine, t.audit_log, t.audit_log.c.action == "switch.disconnect", t.audit_log.c.outcome == "failed"
        )
        >= 1
    )
