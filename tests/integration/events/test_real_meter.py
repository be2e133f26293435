"""A real simulated meter on loopback against the head-end's push listener and collector: its pushes
are stored and published once, and a collection reads its event log so an event whose push was lost
is still stored (and a second collection with nothing new asks the log for nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.bus import InProcessBus
from openami.bus.topics import METER_EVENTS
from openami.db import tables as t
from openami.db.meters import upsert_meters
from openami.domain.meter_events import EventCode, MeterEvents
from openami.domain.meters import CustomerClass
from openami.headend.collector import Collector
from openami.headend.events import EventPipeline, Refusal
from openami.headend.push_listener import PushListener
from openami.headend.reader import MeterTarget
from openami.protocols.dlms import obis
from openami.protocols.dlms.client import DlmsClient
from openami.settings import CollectionSettings, PushSettings
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meter
from openami.sim.meter_profile import encode_clock
from tests.integration.db.helpers import spec

TITLE = b"OAM\x00\x00\x07\x00\x01"
GUEK = bytes(range(16))
GAK = bytes(range(16, 32))
HEADEND_TITLE = bytes.fromhex("4F414D4845000001")
DEADLINE_S = 30.0


@dataclass
class Stack:
    engine: Engine
    meter: SimulatedMeter
    meter_id: int
    pipeline: EventPipeline
    collector: Collector
    published: list[MeterEvents] = field(default_factory=list)

    def published_codes(self) -> list[tuple[int, str]]:
        return [(int(e.code), e.source) for batch in self.published for e in batch.events]

    async def wait_stored(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while self.pipeline.stats.stored + self.pipeline.stats.duplicates < count:
            assert loop.time() < deadline, f"{self.pipeline.stats} after {DEADLINE_S} s"
            await asyncio.sleep(0.02)
        await self.pipeline.drain()
        await asyncio.sleep(0)


def _stored(engine: Engine) -> list[tuple[int, str]]:
    e = t.meter_events.c
    with engine.connect() as conn:
        return [(int(c), str(s)) for c, s in conn.execute(sa.select(e.code, e.source).order_by(e.meter_time, e.code))]


@pytest.fixture
async def stack(engine: Engine) -> AsyncIterator[Stack]:
    with engine.begin() as conn:
        ids = upsert_meters(conn, [spec(7, system_title=TITLE)], now=datetime.now(UTC) - timedelta(days=2))
    meter_id = ids[spec(7).serial]
    bus = InProcessBus()
    settings = PushSettings(port=0)
    targets: dict[int, MeterTarget] = {}
    pipeline = EventPipeline(engine, bus, lambda: targets, settings)
    listener = PushListener(pipeline, settings)
    await pipeline.start()
    await listener.start()
    host, port = listener.address
    meter = SimulatedMeter(
        MeterConfig(spec(7).serial, TITLE, GUEK, GAK, profile_days=1, push_host=host, push_port=port)
    )
    server = await serve_meter(meter, "127.0.0.1", 0)
    meter_port = int(server.sockets[0].getsockname()[1])
    targets[meter_id] = MeterTarget(
        meter_id, spec(7).serial, "127.0.0.1", meter_port, TITLE, CustomerClass.RESIDENTIAL, guek=GUEK, gak=GAK
    )
    collector = Collector(
        engine, bus, targets, client_system_title=HEADEND_TITLE,
        settings=CollectionSettings(retries=0, timeout_s=5.0, catch_up_days=1),
    )  # fmt: skip
    collector.events = pipeline
    stack = Stack(engine, meter, meter_id, pipeline, collector)

    async def on_events(batch: MeterEvents) -> None:
        stack.published.append(batch)

    bus.subscribe(METER_EVENTS, on_events)
    try:
        yield stack
    finally:
        await close_servers([server])
        await listener.stop()
        await pipeline.stop()
        await collector.close()
        await bus.close()


async def test_a_meters_push_is_stored_and_published(stack: Stack) -> None:
    stack.meter.record_event(EventCode.VOLTAGE_SAG, 190.5)
    stack.meter.record_event(EventCode.COVER_OPENED)
    await stack.wait_stored(2)
    assert _stored(stack.engine) == [(10, "push"), (40, "push")]
    assert sorted(stack.published_codes()) == [(10, "push"), (40, "push")]
    sag = next(e for b in stack.published for e in b.events if e.code == EventCode.VOLTAGE_SAG)
    assert sag.value == 190.5
    assert sag.meter_time == stack.meter.events[0][0]


async def test_collection_reads_the_event_log_so_a_lost_last_gasp_is_still_stored(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles: list[str] = []
    real = DlmsClient.read_profile

    async def counting(self: DlmsClient, name: Any, *args: Any, **kwargs: Any) -> Any:
        profiles.append(str(name))
        return await real(self, name, *args, **kwargs)

    monkeypatch.setattr(DlmsClient, "read_profile", counting)
    stack.meter.power_fail(last_gasp=False)  # logged, but its push never left the meter
    stack.meter.power_restore()  # pushed
    await stack.wait_stored(1)
    assert _stored(stack.engine) == [(2, "push")]

    summary = await stack.collector.collect([stack.meter_id])
    assert summary.received == 1
    await stack.wait_stored(3)  # the log's power-down (new) and power-up (a duplicate of the push)
    assert _stored(stack.engine) == [(1, "log"), (2, "push")]
    assert stack.published_codes() == [(2, "push"), (1, "log")]  # each event published once
    assert profiles.count(str(obis.EVENT_LOG)) == 1

    again = await stack.collector.collect([stack.meter_id])  # nothing new in the log: not asked for rows
    assert again.received == 1
    await stack.pipeline.drain()
    assert profiles.count(str(obis.EVENT_LOG)) == 1
    assert profiles.count(str(obis.LOAD_PROFILE)) == 2

    stack.meter.record_event(EventCode.MAGNETIC_FIELD)  # pushed, and in the log for the next collection
    await stack.wait_stored(4)
    await stack.collector.collect([stack.meter_id])
    await stack.wait_stored(5)
    assert profiles.count(str(obis.EVENT_LOG)) == 2
    assert _stored(stack.engine) == [(1, "log"), (2, "push"), (42, "push")]
    assert [c for c, _ in stack.published_codes()] == [2, 1, 42]


async def test_a_full_queue_neither_blocks_a_collection_nor_loses_the_logs_events(stack: Stack) -> None:
    jammed = EventPipeline(stack.engine, InProcessBus(), lambda: stack.collector.targets, PushSettings(queue_size=1))
    await jammed.submit_refusal(Refusal("push.unknown-source", None, {"reason": "test"}))  # full, no worker yet
    stack.collector.events = jammed
    stack.meter.power_fail(last_gasp=False)
    stack.meter.power_restore()
    await stack.wait_stored(1)  # the restoration's push, through the listener's own pipeline

    summary = await asyncio.wait_for(stack.collector.collect([stack.meter_id]), DEADLINE_S)  # does not wait
    assert summary.received == 1
    assert _stored(stack.engine) == [(2, "push")]  # the log's rows found no room

    await jammed.start()  # the storm is over
    try:
        await jammed.drain()
        await stack.collector.collect([stack.meter_id])  # the same rows are read again
        await jammed.drain()
    finally:
        await jammed.stop()
    assert _stored(stack.engine) == [(1, "log"), (2, "push")]


async def test_log_rows_openami_cannot_read_are_skipped_and_the_readings_stand(stack: Stack) -> None:
    at = int(stack.meter.clock.time().timestamp()) - 5
    # a vendor row of another shape (an octet-string where the code should be), straight into the log's buffer
    stack.meter.event_log._buffer.capture((encode_clock(at), b"vendor-specific", None))
    stack.meter.record_event(EventCode.COVER_OPENED)  # pushed, and logged after the odd row
    await stack.wait_stored(1)
    summary = await stack.collector.collect([stack.meter_id])
    assert summary.received == 1
    assert summary.failed == 0
    await stack.wait_stored(2)  # the log's cover-opened: a duplicate of the push
    assert _stored(stack.engine) == [(40, "push")]
