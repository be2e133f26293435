"""``headend.ping`` against a meter that is not there: silence is False, and the counters it reserved
are recorded (a ping never reuses an invocation counter). ``ping_many`` against simulated meters:
answers in order, blocks reserved for the round in one go and never reused."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db.tables import invocation_counters
from openami.headend.ping import PING_SESSIONS, ping, ping_many
from openami.services.bootstrap import build_platform, stop_platform
from openami.services.meters import import_commissioning, load_targets
from openami.settings import Settings
from openami.sim.commissioning import commissioning_document
from openami.sim.fleet import Fleet, FleetConfig
from openami.sim.runner import LocalFleetControl, run_fleet_in_process

KEYS = {"guek": "11" * 16, "gak": "22" * 16}


async def test_a_meter_that_does_not_answer_is_dark_and_its_counters_move_on(engine: Engine, tmp_path: Path) -> None:
    platform = build_platform(Settings(data_dir=tmp_path), engine=engine)
    meter: dict[str, Any] = {
        "serial": "PINGTEST01", "kind": "electric", "customer_class": "residential", "host": "127.0.0.1", "port": 1,
        "system_title": "4F414D0000000002", "model": "test", "firmware": "1.0", "service_point_id": None,
        "keys": KEYS,
    }  # fmt: skip
    document = {"format": "openami-commissioning", "version": 1, "meters": [meter]}
    meter_id = import_commissioning(engine, platform.keystore, document, now=datetime.now(UTC))["PINGTEST01"]
    platform.collector.targets = load_targets(engine, platform.keystore)
    try:
        assert await ping(platform.collector, meter_id, timeout_s=0.5) is False
        first = _next_counter(engine, meter_id)
        assert await ping(platform.collector, meter_id, timeout_s=0.5) is False
        assert _next_counter(engine, meter_id) > first  # each ping uses a fresh block, never one used before
        assert await ping(platform.collector, meter_id + 1000, timeout_s=0.5) is False  # not a registered meter
    finally:
        await stop_platform(platform)


async def test_a_round_of_pings_answers_in_order_with_counters_reserved_once_and_never_reused(
    engine: Engine, tmp_path: Path
) -> None:
    platform = build_platform(Settings(data_dir=tmp_path), engine=engine)
    local = LocalFleetControl()
    config = FleetConfig(meters=3, seed=8, port=0, single_address=True, days=1, flaky_fraction=0)
    try:
        async with _fleet(config, local) as fleet:
            ids = import_commissioning(engine, platform.keystore, commissioning_document(fleet), now=datetime.now(UTC))
            platform.collector.targets = load_targets(engine, platform.keystore)
            meters = [ids[m.serial] for m in fleet.meters]
            assert local.control("power-fail", [fleet.meters[1].index], last_gasp_share=0.0, seed=1) == 1
            order = [meters[2], meters[1], max(meters) + 1000, meters[0]]  # one unknown: not pinged, False
            assert await ping_many(platform.collector, order, timeout_s=1.0) == [True, False, False, True]
            before = {m: _next_counter(engine, m) for m in meters}
            # a second round reserves fresh blocks: the meters would refuse a counter used before as a replay
            assert await ping_many(platform.collector, order, timeout_s=1.0) == [True, False, False, True]
            assert all(_next_counter(engine, m) > before[m] for m in meters)
            # a session in between (a single ping) makes nothing stale for the next round either
            assert await ping(platform.collector, meters[0], timeout_s=1.0) is True
            assert await ping_many(platform.collector, [meters[0]], timeout_s=1.0) == [True]
    finally:
        await stop_platform(platform)


async def test_meters_silent_at_the_connect_do_not_hold_back_a_meter_that_answers(
    engine: Engine, tmp_path: Path
) -> None:
    """More silent meters than ``PING_SESSIONS`` ahead of one that answers: its ping is not queued behind
    their timeouts (a silent meter waits in ``PING_SLOTS``, not in the sessions' limit)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    fillers = _fill_accept_queue(silent.getsockname())  # the kernel now drops SYNs: connects hang, as to a dark meter
    platform = build_platform(Settings(data_dir=tmp_path), engine=engine)
    config = FleetConfig(meters=1, seed=9, port=0, single_address=True, days=1, flaky_fraction=0)
    try:
        async with _fleet(config, LocalFleetControl()) as fleet:
            document = commissioning_document(fleet)
            host, port = silent.getsockname()
            for n in range(PING_SESSIONS + 8):
                document["meters"].append({
                    "serial": f"SILENT{n:04d}", "kind": "electric", "customer_class": "residential", "host": host,
                    "port": port, "system_title": f"4F414D00{n:08X}", "model": "test", "firmware": "1.0",
                    "service_point_id": None, "keys": KEYS,
                })  # fmt: skip
            ids = import_commissioning(engine, platform.keystore, document, now=datetime.now(UTC))
            platform.collector.targets = load_targets(engine, platform.keystore)
            dark = [ids[f"SILENT{n:04d}"] for n in range(PING_SESSIONS + 8)]
            alive = ids[fleet.meters[0].serial]
            finished: list[int] = []

            async def one(meter_id: int) -> bool:
                answered = await ping(platform.collector, meter_id, timeout_s=2.0)
                finished.append(meter_id)
                return answered

            answers = await asyncio.gather(*(one(m) for m in [*dark, alive]))  # the answering meter asked last
            assert answers == [False] * len(dark) + [True]
            assert finished[0] == alive
            # a round tells each answer as it comes: the answering meter's long before the silent ones'
            heard: list[tuple[int, bool]] = []
            answers = await ping_many(
                platform.collector, [*dark, alive], timeout_s=1.0, on_answer=lambda m, up: heard.append((m, up))
            )
            assert answers == [False] * len(dark) + [True]
            assert heard[0] == (alive, True)
            assert sorted(heard) == sorted(zip([*dark, alive], answers, strict=True))
    finally:
        await stop_platform(platform)
        for sock in (*fillers, silent):
            sock.close()


async def test_a_ping_waiting_for_a_session_slot_is_not_taken_for_silence(engine: Engine, tmp_path: Path) -> None:
    """Four times ``PING_SESSIONS`` answering meters, each session ~1 s: the last ones wait ~3 s for a
    slot, longer than a session's bound (3 x 1 s), which runs from when the session starts."""
    platform = build_platform(Settings(data_dir=tmp_path), engine=engine)
    local = LocalFleetControl()
    config = FleetConfig(meters=PING_SESSIONS * 4, seed=10, port=0, single_address=True, days=1, flaky_fraction=0)
    try:
        async with _fleet(config, local) as fleet:
            for meter in local.hosted.meters.values():
                meter.faults.latency_s = 0.25  # every answer: associate (2 exchanges), read, release ~1 s
            ids = import_commissioning(engine, platform.keystore, commissioning_document(fleet), now=datetime.now(UTC))
            platform.collector.targets = load_targets(engine, platform.keystore)
            meters = [ids[m.serial] for m in fleet.meters]
            assert await ping_many(platform.collector, meters, timeout_s=1.0) == [True] * len(meters)
    finally:
        await stop_platform(platform)


@contextlib.asynccontextmanager
async def _fleet(config: FleetConfig, control: LocalFleetControl) -> AsyncIterator[Fleet]:
    """A simulated fleet in this process, for as long as the block runs."""
    stop = asyncio.Event()
    ready: asyncio.Future[Fleet] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_fleet_in_process(config, stop, ready, control=control))
    try:
        yield await ready
    finally:
        stop.set()
        await task


def _fill_accept_queue(address: tuple[str, int]) -> list[socket.socket]:
    """Connections nobody accepts, until the listener's accept queue is full."""
    fillers = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(address)
        fillers.append(sock)
    return fillers


def _next_counter(engine: Engine, meter_id: int) -> int:
    query = sa.select(invocation_counters.c.client_ic_next).where(invocation_counters.c.meter_id == meter_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
