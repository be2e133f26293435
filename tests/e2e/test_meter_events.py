"""Meter events end to end: a simulated fleet in worker processes pushes to the platform's listener
(started by ``start_platform``; in the platform's process or, with ``push.process``, in a process of
its own that hands the stored events back), and a collection reads the meters' event logs, so last
gasps whose pushes never left the meters are still stored; every event is stored and published
exactly once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.bus.topics import METER_EVENTS
from openami.db import tables as t
from openami.db.meters import meter_ids_by_serial
from openami.domain.meter_events import EventCode, MeterEvents
from openami.services.bootstrap import build_platform, reload_targets, start_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.services.push_process import PushProcess
from openami.settings import CollectionSettings, PushSettings, Settings
from openami.sim.fleet import FleetConfig
from openami.sim.runner import start_fleet_processes

DEADLINE_S = 60.0


def _stored(engine: Engine) -> Counter[tuple[int, int, str]]:
    e = t.meter_events.c
    with engine.connect() as conn:
        return Counter((int(m), int(c), str(s)) for m, c, s in conn.execute(sa.select(e.meter_id, e.code, e.source)))


async def _until_stored(platform: Platform, code: EventCode, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while sum(n for (_, c, _), n in _stored(platform.engine).items() if c == code) < count:
        assert loop.time() < deadline, f"{code.name}: {_stored(platform.engine)}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("process", [False, True], ids=["in-process", "push-process"])
async def test_pushes_and_event_logs_of_a_fleet(engine: Engine, tmp_path: Path, process: bool) -> None:
    settings = Settings(
        data_dir=tmp_path,
        collection=CollectionSettings(retries=0, timeout_s=5.0, catch_up_days=1),
        push=PushSettings(port=0, process=process),
    )
    platform = build_platform(settings, engine=engine)
    published: list[MeterEvents] = []

    async def on_events(batch: MeterEvents) -> None:
        published.append(batch)

    platform.bus.subscribe(METER_EVENTS, on_events)
    await start_platform(platform)
    assert platform.push_listener is not None
    assert platform.events is not None
    host, port = platform.push_listener.address
    config = FleetConfig(meters=12, seed=21, flaky_fraction=0.0, drift_fraction=0.0, days=1, port=0,
                         push_host=host, push_port=port)  # fmt: skip
    fleet = await asyncio.to_thread(start_fleet_processes, config, processes=1, commissioning_path=tmp_path / "c.json")
    try:
        document = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
        import_commissioning(engine, platform.keystore, document, now=datetime.now(UTC))
        reload_targets(platform)
        if process:  # the push process verifies with keys of its own: wait until it has the new meters'
            assert isinstance(platform.push_listener, PushProcess)
            assert platform.push_listener.pid is not None
            await platform.push_listener.reloaded()
        with engine.connect() as conn:
            by_serial = meter_ids_by_serial(conn, [m.serial for m in fleet.fleet.meters])
        meter_of = {m.index: by_serial[m.serial] for m in fleet.fleet.meters}

        await asyncio.to_thread(fleet.control, "tamper", range(4), kind="cover")
        await _until_stored(platform, EventCode.COVER_OPENED, 4)

        outage = range(4, 10)  # a transformer fault: no last gasp gets out, restoration is pushed
        await asyncio.to_thread(fleet.control, "power-fail", outage, last_gasp_share=0.0)
        await asyncio.to_thread(fleet.control, "power-restore", outage)
        await _until_stored(platform, EventCode.POWER_UP, 6)
        assert not any(c == EventCode.POWER_DOWN for _, c, _ in _stored(engine))

        summary = await platform.collector.collect(sorted(meter_of.values()))
        assert summary.failed == 0
        await platform.events.drain()
        await platform.bus.drain()
    finally:
        await stop_platform(platform)
        fleet.stop()
    stored = _stored(engine)
    assert {(m, s) for m, c, s in stored if c == EventCode.POWER_DOWN} == {(meter_of[i], "log") for i in outage}
    assert {(m, s) for m, c, s in stored if c == EventCode.POWER_UP} == {(meter_of[i], "push") for i in outage}
    assert {(m, s) for m, c, s in stored if c == EventCode.COVER_OPENED} == {(meter_of[i], "push") for i in range(4)}
    assert max(stored.values()) == 1
    keys = [(e.meter_id, e.code, e.meter_time) for batch in published for e in batch.events]
    assert len(keys) == len(set(keys)) == sum(stored.values())  # each stored event published once
    assert platform.events is None  # stopped with the platform
    assert platform.push_listener is None
