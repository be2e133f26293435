"""Full associations over loopback TCP: management (HLS-GMAC + Suite 0) and public clients."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from openami.protocols.dlms.apdu import DataAccessResult
from openami.protocols.dlms.axdr import DoubleLongUnsigned, Enum, Integer
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.client_connection import ClientState
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.errors import ReplayError
from openami.protocols.dlms.obis import (
    ACTIVE_EXPORT,
    ACTIVE_IMPORT,
    CLOCK,
    CURRENT_ASSOCIATION,
    DISCONNECT_CONTROL,
    INVOCATION_COUNTER,
    LOAD_PROFILE,
    SECURITY_SETUP,
    SERIAL,
    Obis,
)
from openami.protocols.dlms.session_errors import AssociationRejectedError, ServiceError
from openami.sim.meter import SimulatedMeter

from .conftest import CLIENT_TITLE, SERVER_TITLE
from .conftest import SERIAL as METER_SERIAL


async def test_management_client_associates_with_hls_gmac_and_suite_0(
    management: Callable[..., ClientSettings],
) -> None:
    async with DlmsClient(management()) as client:
        assert client.associated
        assert client.server_system_title == SERVER_TITLE
        assert client.max_pdu_size == 1024
        assert await client.get(SERIAL, 1, 2) == METER_SERIAL
    assert client._connection.state is ClientState.RELEASED


async def test_management_client_reads_registers_with_scaler_and_unit(
    management: Callable[..., ClientSettings],
) -> None:
    async with DlmsClient(management()) as client:
        imported, unit = await client.read_register(ACTIVE_IMPORT)
        exported, export_unit = await client.read_register("1.0.2.8.0.255")
    assert (unit, export_unit) == (30, 30)
    assert isinstance(imported, int)
    assert imported > 0
    assert exported >= 0


async def test_clock_reads_as_aware_utc_close_to_now(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management()) as client:
        clock = await client.read_clock()
    assert clock.tzinfo is not None
    assert abs(clock - datetime.now(UTC)) < timedelta(seconds=5)


async def test_public_client_reads_clock_and_object_list(public: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(public()) as client:
        clock = await client.read_clock()
        object_list = await client.get(CURRENT_ASSOCIATION, 15, 2)
    assert abs(clock - datetime.now(UTC)) < timedelta(seconds=5)
    assert isinstance(object_list, list)
    listed = {(int(entry[0]), Obis.from_bytes(entry[2])) for entry in object_list}
    assert listed == {(8, CLOCK), (15, CURRENT_ASSOCIATION)}


@pytest.mark.parametrize(
    ("obis", "class_id", "attribute"),
    [
        (SERIAL, 1, 2),
        (ACTIVE_IMPORT, 3, 2),
        (ACTIVE_EXPORT, 3, 3),
        (LOAD_PROFILE, 7, 2),
        (DISCONNECT_CONTROL, 70, 2),
        (SECURITY_SETUP, 64, 2),
        (INVOCATION_COUNTER, 1, 2),
        (CURRENT_ASSOCIATION, 15, 3),
    ],
)
async def test_public_client_refused_anything_but_clock_and_object_list(
    public: Callable[..., ClientSettings], obis: Obis, class_id: int, attribute: int
) -> None:
    async with DlmsClient(public()) as client:
        with pytest.raises(ServiceError) as refused:
            await client.get(obis, class_id, attribute)
        assert refused.value.result == DataAccessResult.READ_WRITE_DENIED
        assert await client.read_clock()  # the association is still usable


async def test_public_client_may_not_set_the_clock_or_disconnect(
    public: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    async with DlmsClient(public()) as client:
        with pytest.raises(ServiceError):
            await client.set(CLOCK, 8, 2, b"\x07\xea\x01\x01\x04\x00\x00\x00\x00\x00\x00\x00")
        with pytest.raises(ServiceError):
            await client.action(DISCONNECT_CONTROL, 70, 1, Integer(0))
    assert meter.disconnect.output_state is True


async def test_management_object_list_lists_every_object(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management()) as client:
        object_list = await client.get(CURRENT_ASSOCIATION, 15, 2)
    listed = {Obis.from_bytes(entry[2]) for entry in object_list}
    assert {CLOCK, SERIAL, ACTIVE_IMPORT, ACTIVE_EXPORT, LOAD_PROFILE, DISCONNECT_CONTROL} <= listed
    assert {SECURITY_SETUP, CURRENT_ASSOCIATION, INVOCATION_COUNTER} <= listed


async def test_association_object_reports_this_association(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management()) as client:
        partners = await client.get(CURRENT_ASSOCIATION, 15, 3)
        mechanism = await client.get(CURRENT_ASSOCIATION, 15, 6)
        status = await client.get(CURRENT_ASSOCIATION, 15, 8)
        client_title = await client.get(SECURITY_SETUP, 64, 4)
    assert (partners[0], partners[1]) == (1, 1)
    assert mechanism[-1] == 5
    assert status == Enum(2)
    assert client_title == CLIENT_TITLE


async def test_disconnect_control_is_readable_but_moves_only_for_signed_commands(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    # the switch obeys the Signed Command Gateway only (tests/integration/dlms/test_signed_switch.py)
    async with DlmsClient(management()) as client:
        with pytest.raises(ServiceError):
            await client.action(DISCONNECT_CONTROL, 70, 1, Integer(0))
        assert await client.get(DISCONNECT_CONTROL, 70, 2) is True
        assert await client.get(DISCONNECT_CONTROL, 70, 3) == Enum(1)
    assert meter.disconnect.output_state is True


async def test_set_clock_moves_the_meter_clock(management: Callable[..., ClientSettings]) -> None:
    target = datetime.now(UTC) + timedelta(hours=1)
    async with DlmsClient(management()) as client:
        await client.set(CLOCK, 8, 2, CosemDateTime.from_datetime(target).to_bytes())
        assert abs(await client.read_clock() - target) < timedelta(seconds=5)


async def test_invocation_counters_are_exposed_for_persistence(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management(invocation_counter=100)) as client:
        await client.get(SERIAL, 1, 2)
        sent, received = client.client_invocation_counter, client.server_invocation_counter
    assert sent > 100
    assert received >= 0
    async with DlmsClient(management(invocation_counter=sent, server_invocation_counter=received)) as again:
        expected = await again.get(INVOCATION_COUNTER, 1, 2)
        assert isinstance(expected, DoubleLongUnsigned)
        assert sent < expected <= again.client_invocation_counter


async def test_stale_invocation_counter_rejected_with_diagnostic_13(management: Callable[..., ClientSettings]) -> None:
    async with DlmsClient(management(invocation_counter=500)) as client:
        await client.get(SERIAL, 1, 2)
    with pytest.raises(AssociationRejectedError) as rejected:
        async with DlmsClient(management(invocation_counter=10)):
            pass
    assert (rejected.value.result, rejected.value.diagnostic) == (1, 13)


async def test_meter_rejects_replayed_server_counter_on_the_client_side(
    management: Callable[..., ClientSettings],
) -> None:
    async with DlmsClient(management()) as client:
        await client.get(SERIAL, 1, 2)
        last = client.server_invocation_counter
    # A client that already accepted a higher counter from this meter refuses the meter's answers.
    with pytest.raises(ReplayError):
        async with DlmsClient(management(invocation_counter=1000, server_invocation_counter=last + 1000)):
            pass
