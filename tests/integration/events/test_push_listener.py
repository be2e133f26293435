"""The push listener on loopback: authenticated notifications stored and published once; everything
else (unknown system title, wrong key, replayed counter, garbage, oversized frames) refused with a
security event and nothing stored; a burst of 10,000 notifications stored without loss. The same over
UDP, where a datagram that finds the queue full is dropped and counted instead of waiting."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.bus import InProcessBus
from openami.bus.topics import METER_EVENTS
from openami.db import meter_events as repo
from openami.db import tables as t
from openami.db.meters import upsert_meters
from openami.domain.meter_events import EventCode, MeterEvents
from openami.domain.meters import CustomerClass
from openami.headend.events import EventPipeline, Refusal
from openami.headend.push_listener import PushListener
from openami.headend.reader import MeterTarget, PendingKeys
from openami.protocols.dlms.cosem.push_setup import TransportService
from openami.protocols.dlms.push import PushedEvent, encode_push
from openami.protocols.dlms.wrapper import encode_wrapper
from openami.settings import PushSettings
from openami.sim.meter import MeterConfig, SimulatedMeter
from tests.integration.db.helpers import spec

DEADLINE_S = 60.0


@dataclass
class Rig:
    engine: Engine
    targets: dict[int, MeterTarget]
    pipeline: EventPipeline
    listener: PushListener
    published: list[MeterEvents] = field(default_factory=list)
    counters: dict[int, int] = field(default_factory=dict)
    sent: int = 0

    def frame(
        self, meter_id: int, events: Sequence[PushedEvent], *, counter: int | None = None, key: bytes | None = None
    ) -> bytes:
        """A notification as meter ``meter_id`` sends it (its next counter unless given)."""
        target = self.targets[meter_id]
        if counter is None:
            counter = self.counters.get(meter_id, 0) + 1
        self.counters[meter_id] = max(counter, self.counters.get(meter_id, 0))
        return encode_push(
            events, system_title=target.system_title, invocation_counter=counter, guek=key or target.guek,
            gak=key or target.gak, sequence=counter & 0xFFFFFF, meter_time=datetime.now(UTC),
        )  # fmt: skip

    async def send(self, *frames: bytes) -> None:
        """One connection per notification, as meters do."""
        host, port = self.listener.address
        for frame in frames:
            _reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            self.sent += 1

    async def settle(self, items: int) -> None:
        """Wait (with a deadline) until ``items`` queue items were taken, then for storage and the bus."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while self.pipeline.stats.received < items:
            assert loop.time() < deadline, f"only {self.pipeline.stats.received} of {items} arrived"
            await asyncio.sleep(0.01)
        await self.pipeline.drain()
        await asyncio.sleep(0)  # let the bus subscriber run

    def published_keys(self) -> list[tuple[int, int, int]]:
        return [(e.meter_id, int(e.code), e.meter_time) for batch in self.published for e in batch.events]


def _stored(engine: Engine) -> list[tuple[int, int, int, str]]:
    e = t.meter_events.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(e.meter_id, e.code, e.meter_time, e.source).order_by(e.meter_time)).all()
    return [(int(a), int(b), int(c), str(d)) for a, b, c, d in rows]


def _security_events(engine: Engine) -> list[tuple[str, int | None]]:
    s = t.security_events.c
    with engine.connect() as conn:
        return [(str(k), m) for k, m in conn.execute(sa.select(s.kind, s.meter_id).order_by(s.id))]


def _targets(engine: Engine, count: int) -> dict[int, MeterTarget]:
    with engine.begin() as conn:
        ids = upsert_meters(conn, [spec(n) for n in range(1, count + 1)], now=datetime.now(UTC) - timedelta(days=1))
    targets = {}
    for n in range(1, count + 1):
        meter_id = ids[spec(n).serial]
        targets[meter_id] = MeterTarget(
            meter_id, spec(n).serial, "127.0.0.1", 4059, spec(n).system_title, CustomerClass.RESIDENTIAL,
            guek=os.urandom(16), gak=os.urandom(16),
        )  # fmt: skip
    return targets


async def _rig(engine: Engine, meters: int, settings: PushSettings) -> Rig:
    targets = _targets(engine, meters)
    bus = InProcessBus()
    pipeline = EventPipeline(engine, bus, lambda: targets, settings)
    rig = Rig(engine, targets, pipeline, PushListener(pipeline, settings))

    async def on_events(batch: MeterEvents) -> None:
        rig.published.append(batch)

    bus.subscribe(METER_EVENTS, on_events)
    await pipeline.start()
    await rig.listener.start()
    return rig


@pytest.fixture
async def rig(engine: Engine) -> AsyncIterator[Rig]:
    rig = await _rig(engine, 5, PushSettings(port=0, idle_timeout_s=2.0, max_frame_bytes=2048))
    try:
        yield rig
    finally:
        await rig.listener.stop()
        await rig.pipeline.stop()


def _now_s() -> int:
    return int(datetime.now(UTC).timestamp())


def _event(code: EventCode, at: int, value: float | None = None) -> PushedEvent:
    return PushedEvent(datetime.fromtimestamp(at, UTC), int(code), value)


async def test_pushes_are_stored_and_published_once(rig: Rig) -> None:
    a, b = sorted(rig.targets)[:2]
    at = _now_s() - 30
    first = rig.frame(a, [_event(EventCode.POWER_DOWN, at)])
    await rig.send(
        first,
        rig.frame(b, [_event(EventCode.VOLTAGE_SAG, at + 5, 181.0), _event(EventCode.COVER_OPENED, at + 6)]),
        rig.frame(a, [_event(EventCode.POWER_DOWN, at)]),  # the meter sent it again (a new counter): a duplicate
        rig.frame(a, [_event(EventCode.POWER_UP, at + 20)]),
        rig.frame(a, [_event(EventCode.MAGNETIC_FIELD, at - 100)]),  # older than what came before: out of order
    )
    await rig.settle(5)
    assert _stored(rig.engine) == [
        (a, 42, at - 100, "push"), (a, 1, at, "push"), (b, 10, at + 5, "push"), (b, 40, at + 6, "push"),
        (a, 2, at + 20, "push"),
    ]  # fmt: skip
    assert sorted(rig.published_keys()) == sorted((m, c, ts) for m, c, ts, _ in _stored(rig.engine))
    sag = next(e for batch in rig.published for e in batch.events if e.code == EventCode.VOLTAGE_SAG)
    assert sag.value == 181.0
    assert sag.source == "push"
    assert _security_events(rig.engine) == []
    with rig.engine.connect() as conn:
        assert repo.load_push_counters(conn) == {(a, 1): 4, (b, 1): 1}


async def test_refusals_are_security_events_and_store_nothing(rig: Rig) -> None:
    a, b, c = sorted(rig.targets)[:3]
    at = _now_s() - 10
    good = rig.frame(a, [_event(EventCode.POWER_DOWN, at)])
    await rig.send(good)
    await rig.settle(1)
    stranger = MeterTarget(999, "X", "127.0.0.1", 1, b"\x00\x11\x22\x33\x44\x55\x66\x77", CustomerClass.RESIDENTIAL,
                           guek=os.urandom(16), gak=os.urandom(16))  # fmt: skip
    rig.targets[999] = stranger
    unknown = rig.frame(999, [_event(EventCode.POWER_DOWN, at)])
    del rig.targets[999]
    await rig.send(
        unknown,  # a system title that is no registered meter's
        rig.frame(b, [_event(EventCode.POWER_DOWN, at)], key=os.urandom(16)),  # wrong keys
        good,  # the same notification again: its counter is not above the last accepted one
        os.urandom(300),  # garbage
        encode_wrapper(1, 102, b"\xdb\x08" + os.urandom(60)),  # a framed but malformed APDU
        encode_wrapper(1, 102, b"\x00" * 100)[:50],  # half a frame, then the connection closes
        b"\x00\x01\x00\x01\x00\x66\xff\xff" + b"\x00" * 64,  # announces 65,535 bytes: above the limit
    )
    await rig.settle(8)
    kinds = sorted(_security_events(rig.engine), key=str)
    assert kinds == sorted(
        [
            ("push.unknown-source", None),  # unknown title
            ("meter.bad-tag", b),
            ("meter.replay", a),
            ("push.unknown-source", None),  # garbage: no wrapper frame
            ("push.unknown-source", None),  # malformed APDU
            ("push.unknown-source", None),  # truncated
            ("push.unknown-source", None),  # oversized
        ],
        key=str,
    )
    assert _stored(rig.engine) == [(a, 1, at, "push")]
    assert rig.published_keys() == [(a, 1, at)]
    # the listener is still serving: a good push from the meter whose bad copy was refused is accepted
    await rig.send(rig.frame(c, [_event(EventCode.POWER_UP, at + 1)]))
    await rig.settle(9)
    assert (c, 2, at + 1, "push") in _stored(rig.engine)


async def test_pending_keys_are_accepted_with_their_own_counter(rig: Rig) -> None:
    a = sorted(rig.targets)[0]
    target = rig.targets[a]
    new_key = os.urandom(16)
    rig.targets[a] = MeterTarget(
        a, target.serial, target.host, target.port, target.system_title, target.customer_class,
        guek=target.guek, gak=target.gak, pending=PendingKeys(1, 2, new_key, new_key),
    )  # fmt: skip
    at = _now_s() - 5
    await rig.send(
        rig.frame(a, [_event(EventCode.POWER_DOWN, at)], counter=50),
        rig.frame(a, [_event(EventCode.POWER_UP, at + 1)], counter=1, key=new_key),  # new keys: a new counter space
    )
    await rig.settle(2)
    assert [row[:3] for row in _stored(rig.engine)] == [(a, 1, at), (a, 2, at + 1)]
    with rig.engine.connect() as conn:
        assert repo.load_push_counters(conn) == {(a, 1): 50, (a, 2): 1}


async def test_impossible_times_are_rejected_not_published(rig: Rig) -> None:
    a = sorted(rig.targets)[0]
    now = _now_s()
    await rig.send(rig.frame(a, [_event(EventCode.POWER_DOWN, now + 86_400), _event(EventCode.POWER_UP, now - 1)]))
    await rig.settle(1)
    assert [row[:3] for row in _stored(rig.engine)] == [(a, 2, now - 1)]
    assert rig.published_keys() == [(a, 2, now - 1)]
    with rig.engine.connect() as conn:
        assert [r.reason for r in repo.list_rejected(conn)] == ["future"]


async def test_the_replay_window_stays_closed_after_a_restart(engine: Engine) -> None:
    settings = PushSettings(port=0)
    rig = await _rig(engine, 1, settings)
    (a,) = rig.targets
    at = _now_s() - 5
    old = rig.frame(a, [_event(EventCode.POWER_DOWN, at)])
    try:
        await rig.send(old)
        await rig.settle(1)
    finally:
        await rig.listener.stop()
        await rig.pipeline.stop()
    restarted = EventPipeline(engine, InProcessBus(), lambda: rig.targets, settings)
    listener = PushListener(restarted, settings)
    await restarted.start()
    await listener.start()
    try:
        rig.pipeline, rig.listener = restarted, listener
        with engine.begin() as conn:  # the event itself is gone: only the counter can refuse the replay
            conn.execute(sa.delete(t.meter_events))
        await rig.send(old)
        await rig.settle(1)
    finally:
        await listener.stop()
        await restarted.stop()
    assert _stored(engine) == []
    assert _security_events(engine) == [("meter.replay", a)]


async def test_a_burst_of_ten_thousand_notifications_is_stored_without_loss(engine: Engine) -> None:
    """More notifications than the queue holds and more connections at once than the listener serves:
    backpressure and the listen backlog absorb them, nothing is lost."""
    settings = PushSettings(port=0, queue_size=500, max_connections=64, batch_size=500, workers=2)
    rig = await _rig(engine, 1000, settings)
    try:
        at = _now_s() - 60
        frames = [rig.frame(m, [_event(EventCode.POWER_DOWN, at + r)]) for r in range(10) for m in sorted(rig.targets)]
        senders = 200
        await asyncio.gather(*(rig.send(*frames[i::senders]) for i in range(senders)))
        await rig.settle(10_000)
    finally:
        await rig.listener.stop()
        await rig.pipeline.stop()
    assert rig.sent == 10_000
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.meter_events)).scalar_one() == 10_000
    assert len(rig.published_keys()) == 10_000
    assert len(set(rig.published_keys())) == 10_000
    assert rig.pipeline.stats.refused == {}


async def test_a_flood_of_junk_is_recorded_in_bounded_security_events_and_good_pushes_still_get_through(
    rig: Rig,
) -> None:
    a = sorted(rig.targets)[0]
    at = _now_s() - 5
    junk = [encode_wrapper(1, 102, b"\xdb\x08" + os.urandom(40)) for _ in range(300)]
    good = [rig.frame(a, [_event(EventCode.POWER_DOWN, at + i)]) for i in range(20)]
    mixed = [frame for pair in zip(junk[:20], good, strict=True) for frame in pair] + junk[20:]
    await asyncio.gather(*(rig.send(*mixed[i::10]) for i in range(10)))
    await rig.settle(320)
    assert len(_stored(rig.engine)) == 20
    s = t.security_events.c
    with rig.engine.connect() as conn:
        rows = conn.execute(sa.select(s.kind, s.details)).all()
    assert {kind for kind, _ in rows} == {"push.unknown-source"}
    suppressed = sum(json.loads(details).get("suppressed", 0) for _, details in rows)
    individual = sum(1 for _, details in rows if "suppressed" not in json.loads(details))
    assert individual + suppressed == 300  # every refusal recorded: on its own or counted in a flood event
    assert rig.pipeline.stats.refused == {"push.unknown-source": 300}


async def test_refusals_beyond_the_per_batch_bound_become_one_summary_event(engine: Engine) -> None:
    pipeline = EventPipeline(engine, InProcessBus(), dict, PushSettings(port=0, workers=1))
    for n in range(120):  # queued before the worker starts: it takes them as one batch
        await pipeline.submit_refusal(Refusal("push.unknown-source", None, {"reason": "malformed-frame", "n": n}))
    await pipeline.start()
    try:
        await pipeline.drain()
    finally:
        await pipeline.stop()
    s = t.security_events.c
    with engine.connect() as conn:
        rows = [json.loads(d) for (d,) in conn.execute(sa.select(s.details).order_by(s.id))]
    assert len(rows) == 51
    assert [r["n"] for r in rows[:50]] == list(range(50))
    assert rows[50]["suppressed"] == 70


# ------------------------------------------------------------------------------------------------ UDP


async def _send_datagrams(address: tuple[str, int] | None, *datagrams: bytes) -> None:
    assert address is not None, "the listener takes no datagrams"
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=address)
    try:
        for datagram in datagrams:
            transport.sendto(datagram)
    finally:
        transport.close()


async def _received(listener: PushListener, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while listener.datagrams < count:
        assert loop.time() < deadline, f"only {listener.datagrams} of {count} datagrams arrived"
        await asyncio.sleep(0.01)


async def test_datagrams_are_authenticated_stored_and_refused_like_connections(rig: Rig) -> None:
    a, b = sorted(rig.targets)[:2]
    at = _now_s() - 20
    good = rig.frame(a, [_event(EventCode.POWER_DOWN, at)])
    assert rig.listener.udp_address == rig.listener.address  # one port number for both transports
    await _send_datagrams(
        rig.listener.udp_address,
        good,
        rig.frame(b, [_event(EventCode.COVER_OPENED, at + 1)], key=os.urandom(16)),  # wrong keys
        good,  # replayed: its counter is not above the last accepted one
        good + good,  # two frames in one datagram: not a UDP wrapper PDU
        encode_wrapper(1, 1, good[8:]),  # addressed to a logical device, not to the push port
        os.urandom(5),  # shorter than a wrapper header
    )
    await _received(rig.listener, 6)
    await rig.settle(6)
    assert _stored(rig.engine) == [(a, 1, at, "push")]
    assert rig.published_keys() == [(a, 1, at)]
    kinds = sorted(_security_events(rig.engine), key=str)
    assert kinds == sorted([("meter.bad-tag", b), ("meter.replay", a)] + [("push.unknown-source", None)] * 3, key=str)
    assert rig.pipeline.stats.dropped == 0


async def test_datagrams_beyond_a_full_queue_are_dropped_and_counted_never_waited_for(engine: Engine) -> None:
    settings = PushSettings(port=0, queue_size=10, workers=1)
    targets = _targets(engine, 50)
    pipeline = EventPipeline(engine, InProcessBus(), lambda: targets, settings)
    listener = PushListener(pipeline, settings)
    rig = Rig(engine, targets, pipeline, listener)
    await listener.start()  # the pipeline's workers are not started yet: nothing leaves the queue
    try:
        at = _now_s() - 60
        await _send_datagrams(
            listener.udp_address, *(rig.frame(m, [_event(EventCode.POWER_DOWN, at)]) for m in targets)
        )
        await _received(listener, 50)
        assert pipeline.queued == 10
        assert pipeline.stats.dropped == 40
        await pipeline.start()
        await pipeline.drain()
    finally:
        await listener.stop()
        await pipeline.stop()
    assert len(_stored(engine)) == 10


async def test_a_simulated_meter_configured_for_udp_pushes_datagrams_the_listener_accepts(rig: Rig) -> None:
    meter_id = sorted(rig.targets)[0]
    target = rig.targets[meter_id]
    assert rig.listener.udp_address is not None
    host, port = rig.listener.udp_address
    meter = SimulatedMeter(
        MeterConfig(target.serial, target.system_title, target.guek, target.gak, profile_days=1,
                    push_host=host, push_port=port, push_transport=TransportService.UDP)
    )  # fmt: skip
    meter.record_event(EventCode.VOLTAGE_SWELL, 253.0)
    meter.power_fail(last_gasp=True)
    await meter.pushes.idle()
    await _received(rig.listener, 2)
    await rig.settle(2)
    assert rig.listener.accepted == 0  # no TCP connection was opened
    assert sorted((m, c) for m, c, _, _ in _stored(rig.engine)) == [(meter_id, 1), (meter_id, EventCode.VOLTAGE_SWELL)]
    assert meter.pushes.sent == 2


def test_the_pipeline_has_one_worker_on_sqlite_two_on_postgresql_unless_told(engine: Engine) -> None:
    by_database = EventPipeline(engine, InProcessBus(), dict, PushSettings(port=0)).worker_count
    assert by_database == (1 if engine.dialect.name == "sqlite" else 2)  # SQLite: one writer at a time
    assert EventPipeline(engine, InProcessBus(), dict, PushSettings(port=0, workers=3)).worker_count == 3
