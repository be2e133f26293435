"""Bad input never crashes the meter: it answers with the standard refusal or closes that connection only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from openami.protocols.dlms.apdu import DataAccessResult
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.obis import ACTIVE_IMPORT, CLOCK, SERIAL, Obis
from openami.protocols.dlms.session_errors import ConnectionClosedError, DlmsTimeoutError, ServiceError
from openami.protocols.dlms.wrapper import encode_wrapper
from openami.sim.meter import SimulatedMeter

from .conftest import RawSession


async def _still_serving(public: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(public()) as client:
        assert await client.read_clock()


async def test_unknown_obis_answers_object_undefined(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management()) as client:
        with pytest.raises(ServiceError) as refused:
            await client.get(Obis(1, 0, 99, 8, 0, 255), 3, 2)
        assert refused.value.result == DataAccessResult.OBJECT_UNDEFINED
        assert await client.get(SERIAL, 1, 2) == "OAM00000042"


async def test_unknown_attribute_answers_object_undefined(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management()) as client:
        with pytest.raises(ServiceError) as refused:
            await client.get(ACTIVE_IMPORT, 3, 17)
        assert refused.value.result == DataAccessResult.OBJECT_UNDEFINED
        results = await client.get_with_list([(ACTIVE_IMPORT, 3, 2), (ACTIVE_IMPORT, 3, 9), ("0.0.0.0.0.0", 1, 2)])
        assert results[1:] == [DataAccessResult.OBJECT_UNDEFINED, DataAccessResult.OBJECT_UNDEFINED]
        assert isinstance(results[0], int)


async def test_wrong_type_on_set_answers_type_unmatched(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management()) as client:
        with pytest.raises(ServiceError) as refused:
            await client.set(CLOCK, 8, 2, "not a date-time")
        assert refused.value.result == DataAccessResult.TYPE_UNMATCHED


async def test_garbage_closes_only_that_connection(
    management: Callable[..., ClientSettings], public: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    async with DlmsClient(management()) as busy:  # an association open during the attack
        garbage = await raw_session(public())
        garbage.write(b"\x17\x03\x03\x00\x20" + bytes(range(64)))  # not a wrapper frame (a TLS record)
        assert await garbage.closed_by_peer()
        assert await busy.get(SERIAL, 1, 2) == "OAM00000042"
    await _still_serving(public)


async def test_oversized_frame_closes_that_connection(
    public: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await raw_session(public())
    session.write(b"\x00\x01\x00\x10\x00\x01\xff\xff")  # announces a 65535-byte APDU
    assert await session.closed_by_peer()
    await _still_serving(public)


async def test_truncated_frame_waits_then_other_clients_are_served(
    public: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session = await raw_session(public())
    session.write(encode_wrapper(16, 1, b"\x60\x1d\xa1\x09")[:-2])  # header promises more than arrives
    await _still_serving(public)
    session.close()
    await _still_serving(public)


@pytest.mark.parametrize(
    "apdu",
    [
        b"",
        b"\x60\x05\xa1\x03\x06\x01\x00",  # AARQ with a nonsense context
        b"\xc0\x01",  # truncated GET before association
        b"\xff\xff\xff",
        b"\x62\x80",
    ],
)
async def test_malformed_apdu_is_answered_and_the_meter_keeps_serving(
    public: Callable[..., ClientSettings], raw_session: Callable, apdu: bytes
) -> None:
    session = await raw_session(public())
    answer = await session.exchange(apdu)
    assert answer[:1] in (b"\x61", b"\xd8", b"\x63")  # AARE rejected, exception-response or RLRE
    await _still_serving(public)


async def test_malformed_request_on_an_association_answers_exception(
    public: Callable[..., ClientSettings], raw_session: Callable
) -> None:
    session: RawSession = await raw_session(public())
    await session.associate()
    assert (await session.exchange(b"\xc0\x01\xc1\x00"))[:1] == b"\xd8"
    assert (await session.exchange(b"\xc0\x09\xc1"))[:1] == b"\xd8"


async def test_unknown_client_sap_closes_without_reply(public: Callable[..., ClientSettings]) -> None:
    with pytest.raises(ConnectionClosedError):
        async with DlmsClient(public(client_sap=99)):
            pass
    with pytest.raises(ConnectionClosedError):
        async with DlmsClient(public(server_address=7)):
            pass
    await _still_serving(public)


async def test_silent_meter_raises_timeout(public: Callable[..., ClientSettings], meter: SimulatedMeter) -> None:
    meter.faults.silent = True
    with pytest.raises(DlmsTimeoutError):
        async with DlmsClient(public(timeout_s=0.3)):
            pass
    meter.faults.silent = False
    await _still_serving(public)


async def test_slow_meter_answers_in_order(public: Callable[..., ClientSettings], meter: SimulatedMeter) -> None:
    meter.faults.latency_s = 0.05
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with DlmsClient(public()) as client:
        assert await client.read_clock()
    assert loop.time() - started >= 0.1


async def test_offline_meter_closes_connections(public: Callable[..., ClientSettings], meter: SimulatedMeter) -> None:
    meter.faults.offline = True
    with pytest.raises(ConnectionClosedError):
        async with DlmsClient(public()):
            pass


async def test_nothing_listening_is_a_connection_error() -> None:
    with pytest.raises(ConnectionClosedError):
        async with DlmsClient(ClientSettings.public("127.0.0.1", 1, timeout_s=1.0)):
            pass
