"""One simulated meter on loopback: ciphered pushes to a TCP listener, the event log read by range, power state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from openami.domain.meter_events import EventCode
from openami.protocols.dlms import obis
from openami.protocols.dlms.axdr import Enum, Float64, Integer, LongUnsigned, Structure
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.errors import AuthenticationTagError
from openami.protocols.dlms.session_errors import ConnectionClosedError, DlmsTimeoutError
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meter

from .push_listener import Decoder, FrameSink

TITLE = b"OAM\x00\x00\x01\x02\x03"
GUEK = bytes(range(16))
GAK = bytes(range(16, 32))
HEADEND_TITLE = b"OPENAMI1"


class Clock:
    """The meter's injected real time, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now


@contextlib.asynccontextmanager
async def served(meter: SimulatedMeter) -> AsyncIterator[tuple[str, int]]:
    server = await serve_meter(meter, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", int(server.sockets[0].getsockname()[1])
    finally:
        await close_servers([server])


def _meter(sink: FrameSink | None, clock: Clock | None = None) -> SimulatedMeter:
    config = MeterConfig(
        "OAM00000042", TITLE, GUEK, GAK, profile_days=1,
        push_host="127.0.0.1" if sink else None, push_port=sink.port if sink else 0,
    )  # fmt: skip
    return SimulatedMeter(config) if clock is None else SimulatedMeter(config, now=clock)


def _client(address: tuple[str, int], counter: int = 0, timeout_s: float = 5.0) -> DlmsClient:
    host, port = address
    return DlmsClient(
        ClientSettings.management(
            host, port, system_title=HEADEND_TITLE, guek=GUEK, gak=GAK, timeout_s=timeout_s, invocation_counter=counter
        )
    )


async def test_event_is_pushed_ciphered_with_the_counter_its_responses_use() -> None:
    async with FrameSink() as sink:
        meter = _meter(sink)
        async with served(meter) as address, _client(address) as client:
            await client.read_clock()
            answered = client.server_invocation_counter
            meter.record_event(EventCode.VOLTAGE_SAG, 190.5)
            (frame,) = await sink.wait_for(1)
            await client.read_clock()  # the next answer continues the same counter
            after = client.server_invocation_counter
    push = Decoder({TITLE: (GUEK, GAK)})(frame)
    assert push.system_title == TITLE
    assert answered < push.invocation_counter < after
    (event,) = push.events
    logged_at, code, value = meter.events[-1]
    assert (event.code, event.value) == (code, value) == (EventCode.VOLTAGE_SAG, 190.5)
    assert event.time == datetime.fromtimestamp(logged_at, UTC)


async def test_push_under_other_keys_is_rejected_by_the_decoder() -> None:
    async with FrameSink() as sink:
        meter = _meter(sink)
        meter.record_event(EventCode.COVER_OPENED)
        (frame,) = await sink.wait_for(1)
    with pytest.raises(AuthenticationTagError):
        Decoder({TITLE: (GAK, GUEK)})(frame)


async def test_event_log_is_read_by_range_with_the_dlms_client() -> None:
    clock = Clock()
    meter = _meter(None, clock)
    start = clock.now
    for minutes, (code, value) in enumerate(
        [(EventCode.COVER_OPENED, None), (EventCode.VOLTAGE_SWELL, 262.0), (EventCode.POWER_DOWN, None)]
    ):
        clock.now = start + timedelta(minutes=10 * minutes)
        meter.record_event(code, value)
    async with served(meter) as address, _client(address) as client:
        rows = await client.read_profile(obis.EVENT_LOG, start + timedelta(minutes=5), start + timedelta(minutes=20))
        columns = await client.profile_columns(obis.EVENT_LOG)
        last_code = await client.get(obis.EVENT_CODE, 1, 2)
    assert [(c.class_id, c.logical_name) for c in columns][:2] == [(8, obis.CLOCK), (1, obis.EVENT_CODE)]
    assert [(row.clock, row.values) for row in rows] == [
        (start + timedelta(minutes=10), (LongUnsigned(11), Float64(262.0))),
        (start + timedelta(minutes=20), (LongUnsigned(1), None)),
    ]
    assert last_code == LongUnsigned(EventCode.POWER_DOWN)


async def test_power_failure_sends_a_last_gasp_drops_the_meter_and_restoration_brings_it_back() -> None:
    async with FrameSink() as sink:
        meter = _meter(sink)
        decode = Decoder({TITLE: (GUEK, GAK)})
        async with served(meter) as address:
            client = _client(address)
            await client.connect()
            meter.power_fail(last_gasp=True)
            with pytest.raises((ConnectionClosedError, DlmsTimeoutError)):  # the open association is dropped
                await client.read_clock()
            await client.close(release=False)
            with pytest.raises((ConnectionClosedError, DlmsTimeoutError)):  # and no new one is accepted
                async with _client(address, counter=client.client_invocation_counter, timeout_s=2.0):
                    pass
            gasp = decode((await sink.wait_for(1))[0])
            meter.power_restore()
            restored = decode((await sink.wait_for(2))[1])
            async with _client(address, counter=client.client_invocation_counter + 1) as again:
                assert await again.read_clock()
    assert [e.code for e in gasp.events] == [EventCode.POWER_DOWN]
    assert [e.code for e in restored.events] == [EventCode.POWER_UP]
    assert restored.invocation_counter > gasp.invocation_counter
    assert restored.sequence == gasp.sequence + 1


async def test_power_failure_without_last_gasp_is_only_logged() -> None:
    async with FrameSink() as sink:
        meter = _meter(sink)
        meter.power_fail(last_gasp=False)
        meter.power_restore()
        (frame,) = await sink.wait_for(1)
    assert [e.code for e in Decoder({TITLE: (GUEK, GAK)})(frame).events] == [EventCode.POWER_UP]
    assert [code for _, code, _ in meter.events] == [EventCode.POWER_DOWN, EventCode.POWER_UP]


async def test_push_setup_is_read_and_moved_over_dlms_and_method_1_pushes_again() -> None:
    async with FrameSink() as first, FrameSink() as second:
        meter = _meter(first)
        async with served(meter) as address, _client(address) as client:
            destination = await client.get(obis.PUSH_SETUP, 40, 3)
            assert destination == Structure((Enum(0), f"127.0.0.1:{first.port}".encode(), Enum(0)))
            await client.set(obis.PUSH_SETUP, 40, 3, Structure((Enum(0), f"127.0.0.1:{second.port}".encode(), Enum(0))))
            meter.record_event(EventCode.MAGNETIC_FIELD)
            await second.wait_for(1)
            await client.action(obis.PUSH_SETUP, 40, 1, Integer(0))
            frames = await second.wait_for(2)
        assert first.frames == []
    decode = Decoder({TITLE: (GUEK, GAK)})
    pushes = [decode(f) for f in frames]
    assert pushes[0].events == pushes[1].events  # the latest event, pushed again on request
    assert [e.code for e in pushes[0].events] == [EventCode.MAGNETIC_FIELD]
