"""Signed switch and limiter commands over real loopback: the meter obeys its command authority only.

A SimulatedMeter pins the authority's certificate; the management client (it holds every ciphering
and authentication key, like a head-end) carries signed commands to the Signed Command Gateway
(class 200, 0.128.96.3.10.255), but can neither invoke Disconnect Control nor write the Limiter
itself. Each refusal is answered, kept in gateway attribute 4 and recorded as a COMMAND_REFUSED event.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openami.domain.meter_events import EventCode
from openami.protocols.dlms import obis
from openami.protocols.dlms.axdr import Data, DoubleLongUnsigned, Enum, Integer, Long64Unsigned, Structure
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.cosem import ControlState, Result
from openami.protocols.dlms.session_errors import ServiceError
from openami.protocols.dlms.signed_command import (
    BROADCAST_TARGET,
    Command,
    Confirmation,
    Envelope,
    LimitParameters,
    Refusal,
    RefusalRecord,
    SignedCommand,
    authority_fingerprint,
    encode_envelope,
    sign_envelope,
)
from openami.sim import control
from openami.sim.meter import MeterConfig, SimulatedMeter, close_servers, serve_meter
from openami.sim.meter_profile import INTERVAL_S

from .conftest import CLIENT_TITLE, GAK, GUEK, SERIAL, SERVER_TITLE

GATEWAY = 200
OTHER_TITLE = bytes.fromhex("4F414D0000000043")
AUTHORITY = ec.generate_private_key(ec.SECP256R1())
INTRUDER = ec.generate_private_key(ec.SECP256R1())


def _certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openami command authority (test)")])
    start = datetime(2020, 1, 1, tzinfo=UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=36500))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


CERTIFICATE = _certificate(AUTHORITY)


class StepClock:
    """Real time, which a test moves on by hand (the meter's registers follow it)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def meter(clock: StepClock) -> SimulatedMeter:
    """The suite's meter, pinning the test authority's certificate, on a clock the test can move."""
    config = MeterConfig(SERIAL, SERVER_TITLE, GUEK, GAK, profile_days=2, authority_certificate=CERTIFICATE)
    return SimulatedMeter(config, now=clock)


def _signed(
    clock: StepClock,
    command: Command,
    counter: int,
    *,
    target: bytes = SERVER_TITLE,
    limit: LimitParameters | None = None,
    key: ec.EllipticCurvePrivateKey = AUTHORITY,
    valid: tuple[timedelta, timedelta] = (timedelta(minutes=-1), timedelta(minutes=5)),
) -> SignedCommand:
    envelope = Envelope(target, command, counter, clock.at + valid[0], clock.at + valid[1], limit=limit)
    return sign_envelope(envelope, key)


async def _execute(client: DlmsClient, signed: SignedCommand | Data) -> Confirmation:
    parameters = signed.to_parameters() if isinstance(signed, SignedCommand) else signed
    return Confirmation.from_data(await client.action(obis.COMMAND_GATEWAY, GATEWAY, 1, parameters))


def _events(meter: SimulatedMeter, *codes: EventCode) -> list[tuple[int, float | None]]:
    wanted = {int(code) for code in codes}
    return [(code, value) for _, code, value in meter.events if code in wanted]


def _apply(meter: SimulatedMeter, name: str, **params: object) -> None:
    assert control.apply({0: meter}, {"op": name, "meters": [0], **params}) == 1


async def test_signed_disconnect_opens_the_switch_and_confirms_it(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    async with DlmsClient(management()) as client:
        confirmation = await _execute(client, _signed(clock, Command.DISCONNECT, 1))
        last_counter = await client.get(obis.COMMAND_GATEWAY, GATEWAY, 3)
        fingerprint = await client.get(obis.COMMAND_GATEWAY, GATEWAY, 2)
    assert confirmation.output_state is False
    assert confirmation.control_state == ControlState.DISCONNECTED
    assert 220 < confirmation.voltage_v < 240
    assert confirmation.current_a == 0.0
    assert confirmation.load_side_voltage_v == 0.0
    assert confirmation.active_threshold_w is None
    assert last_counter == Long64Unsigned(1)
    assert fingerprint == authority_fingerprint(CERTIFICATE)
    assert _events(meter, EventCode.SWITCH_OPENED) == [(EventCode.SWITCH_OPENED, 1)]


async def test_signed_reconnect_closes_at_once(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    _apply(meter, "set-demand", watts=1200.0)
    async with DlmsClient(management()) as client:
        await _execute(client, _signed(clock, Command.DISCONNECT, 1))
        confirmation = await _execute(client, _signed(clock, Command.RECONNECT, 2))
    assert (confirmation.output_state, confirmation.control_state) == (True, ControlState.CONNECTED)
    assert confirmation.current_a == pytest.approx(1200.0 / confirmation.voltage_v)
    assert confirmation.load_side_voltage_v == confirmation.voltage_v
    assert _events(meter, EventCode.SWITCH_OPENED, EventCode.SWITCH_CLOSED) == [(60, 1), (61, 2)]


async def test_armed_switch_closes_when_the_customer_presses_the_button(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    async with DlmsClient(management()) as client:
        await _execute(client, _signed(clock, Command.DISCONNECT, 1))
        armed = await _execute(client, _signed(clock, Command.ARM_RECONNECT, 2))
        _apply(meter, "press-button")
        state = await client.get(obis.DISCONNECT_CONTROL, 70, 3)
    assert (armed.output_state, armed.control_state) == (False, ControlState.READY_FOR_RECONNECTION)
    assert state == Enum(ControlState.CONNECTED)
    switch_events = (EventCode.SWITCH_OPENED, EventCode.SWITCH_ARMED, EventCode.SWITCH_CLOSED)
    assert _events(meter, *switch_events) == [(60, 1), (62, 2), (61, None)]


async def test_limit_set_trips_above_threshold_and_cancel_removes_it(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    _apply(meter, "set-demand", watts=2500.0)
    async with DlmsClient(management()) as client:
        limited = await _execute(client, _signed(clock, Command.SET_LIMIT, 1, limit=LimitParameters(3000, 0)))
        active = await client.get(obis.LIMITER, 71, 3)
        assert meter.disconnect.output_state is True  # 2.5 kW is under 3 kW
        _apply(meter, "set-demand", watts=4200.0)
        assert meter.disconnect.output_state is False  # tripped
        cancelled = await _execute(client, _signed(clock, Command.CANCEL_LIMIT, 2))
        reconnected = await _execute(client, _signed(clock, Command.RECONNECT, 3))
        after = await client.get(obis.LIMITER, 71, 3)
    assert (limited.output_state, limited.active_threshold_w) == (True, 3000)
    assert active == DoubleLongUnsigned(3000)
    assert (cancelled.output_state, cancelled.active_threshold_w) == (False, None)
    assert (reconnected.output_state, reconnected.active_threshold_w) == (True, None)
    assert after is None
    tripping = (EventCode.LIMITER_TRIPPED, EventCode.SWITCH_OPENED, EventCode.SWITCH_CLOSED)
    # the opening names the counter of the limit that caused it: an authorised command explains it
    assert _events(meter, *tripping) == [(63, 4200.0), (60, 1), (61, 3)]


async def test_limit_set_above_current_demand_trips_at_once_in_the_confirmation(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    _apply(meter, "set-demand", watts=6000.0)
    async with DlmsClient(management()) as client:
        confirmation = await _execute(
            client, _signed(clock, Command.SET_LIMIT, 1, limit=LimitParameters(2000, 0, emergency=True))
        )
        emergency = await client.get(obis.LIMITER, 71, 5)
        profile_active = await client.get(obis.LIMITER, 71, 10)
    assert (confirmation.output_state, confirmation.active_threshold_w) == (False, 2000)
    assert (emergency, profile_active) == (DoubleLongUnsigned(2000), True)


def _tampered(clock: StepClock) -> SignedCommand:
    genuine = _signed(clock, Command.RECONNECT, 7)
    forged = encode_envelope(Envelope(SERVER_TITLE, Command.DISCONNECT, 7, clock.at, clock.at + timedelta(minutes=5)))
    return SignedCommand(forged, genuine.signature)


REFUSALS: dict[str, tuple[Callable[[StepClock], SignedCommand | Data], Refusal]] = {
    "forged signature": (lambda c: _signed(c, Command.DISCONNECT, 7, key=INTRUDER), Refusal.BAD_SIGNATURE),
    "tampered envelope": (_tampered, Refusal.BAD_SIGNATURE),
    "other meter's title": (lambda c: _signed(c, Command.DISCONNECT, 7, target=OTHER_TITLE), Refusal.WRONG_METER),
    "expired": (
        lambda c: _signed(c, Command.DISCONNECT, 7, valid=(timedelta(minutes=-10), timedelta(seconds=-1))),
        Refusal.EXPIRED,
    ),
    "not yet valid": (
        lambda c: _signed(c, Command.DISCONNECT, 7, valid=(timedelta(minutes=1), timedelta(minutes=5))),
        Refusal.NOT_YET_VALID,
    ),
    "replayed counter": (lambda c: _signed(c, Command.DISCONNECT, 5), Refusal.REPLAYED),
    "lower counter": (lambda c: _signed(c, Command.DISCONNECT, 3), Refusal.REPLAYED),
    "malformed parameters": (lambda c: Structure((b"\x02\x01",)), Refusal.MALFORMED),
    "malformed envelope": (lambda c: SignedCommand(b"\x02\x01\x11\x01", bytes(64)), Refusal.MALFORMED),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_meter_refuses_and_reports(
    case: str, management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    make, reason = REFUSALS[case]
    async with DlmsClient(management()) as client:
        await _execute(client, _signed(clock, Command.RECONNECT, 5))  # counter 5 accepted (already closed)
        with pytest.raises(ServiceError) as refused:
            await _execute(client, make(clock))
        record = RefusalRecord.from_data(await client.get(obis.COMMAND_GATEWAY, GATEWAY, 4))
        last_counter = await client.get(obis.COMMAND_GATEWAY, GATEWAY, 3)
    assert refused.value.result == Result.READ_WRITE_DENIED
    assert record.reason is reason
    assert last_counter == Long64Unsigned(5)
    assert meter.disconnect.output_state is True
    assert _events(meter, EventCode.COMMAND_REFUSED) == [(70, reason)]
    assert _events(meter, EventCode.SWITCH_OPENED) == []


async def test_management_client_with_every_key_cannot_move_the_switch_or_the_limiter(
    management: Callable[..., ClientSettings], meter: SimulatedMeter
) -> None:
    """A head-end (or whoever stole its keys) holds the ciphering keys but no signing key: harmless."""
    async with DlmsClient(management()) as client:
        for method in (1, 2):
            with pytest.raises(ServiceError) as denied:
                await client.action(obis.DISCONNECT_CONTROL, 70, method, Integer(0))
            assert denied.value.result == Result.READ_WRITE_DENIED
        with pytest.raises(ServiceError):
            await client.set(obis.DISCONNECT_CONTROL, 70, 4, Enum(0))
        for attribute in (3, 4, 5, 6):
            with pytest.raises(ServiceError):
                await client.set(obis.LIMITER, 71, attribute, DoubleLongUnsigned(1))
        output = await client.get(obis.DISCONNECT_CONTROL, 70, 2)
        mode = await client.get(obis.DISCONNECT_CONTROL, 70, 4)
    assert output is True
    assert mode == Enum(1)
    assert meter.disconnect.output_state is True
    assert meter.switch.limiter.threshold_active is None


async def test_object_list_shows_no_method_access_on_disconnect_control(
    management: Callable[..., ClientSettings],
) -> None:
    async with DlmsClient(management()) as client:
        object_list = await client.get(obis.CURRENT_ASSOCIATION, 15, 2)
    entries = {(int(entry[0]), bytes(entry[2])): entry[3] for entry in object_list}
    _attributes, methods = entries[(70, obis.DISCONNECT_CONTROL.to_bytes())]
    assert all(int(method[1]) == 0 for method in methods)  # no access to remote_disconnect/reconnect
    assert (200, obis.COMMAND_GATEWAY.to_bytes()) in entries
    assert (71, obis.LIMITER.to_bytes()) in entries


async def test_ignore_disconnects_refuses_disconnects_but_not_reconnects_until_cleared(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    async with DlmsClient(management()) as client:
        await _execute(client, _signed(clock, Command.DISCONNECT, 1))
        await _execute(client, _signed(clock, Command.IGNORE_DISCONNECTS_ON, 2, target=BROADCAST_TARGET))
        ignoring = await client.get(obis.COMMAND_GATEWAY, GATEWAY, 5)
        reconnected = await _execute(client, _signed(clock, Command.RECONNECT, 3))
        with pytest.raises(ServiceError) as refused:
            await _execute(client, _signed(clock, Command.DISCONNECT, 4))
        record = RefusalRecord.from_data(await client.get(obis.COMMAND_GATEWAY, GATEWAY, 4))
        assert meter.disconnect.output_state is True
        await _execute(client, _signed(clock, Command.IGNORE_DISCONNECTS_OFF, 5, target=BROADCAST_TARGET))
        cleared = await client.get(obis.COMMAND_GATEWAY, GATEWAY, 5)
        disconnected = await _execute(client, _signed(clock, Command.DISCONNECT, 6))
    assert (ignoring, cleared) == (True, False)
    assert reconnected.output_state is True
    assert refused.value.result == Result.TEMPORARY_FAILURE
    assert (record.reason, record.counter) == (Refusal.IGNORING_DISCONNECTS, 4)
    assert disconnected.output_state is False
    mode_events = (EventCode.IGNORE_DISCONNECTS_ON, EventCode.IGNORE_DISCONNECTS_OFF, EventCode.COMMAND_REFUSED)
    assert _events(meter, *mode_events) == [(71, 2), (70, Refusal.IGNORING_DISCONNECTS), (72, 5)]


async def test_broadcast_disconnect_is_refused(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    # Envelope() will not build one; the bytes of a genuine broadcast with the command byte changed
    # are what an insider would try: the signature no longer covers them.
    genuine = _signed(clock, Command.IGNORE_DISCONNECTS_ON, 1, target=BROADCAST_TARGET)
    envelope = bytearray(genuine.envelope)
    envelope[15] = Command.DISCONNECT
    async with DlmsClient(management()) as client:
        with pytest.raises(ServiceError):
            await _execute(client, SignedCommand(bytes(envelope), genuine.signature))
    assert meter.disconnect.output_state is True
    assert _events(meter, EventCode.COMMAND_REFUSED) == [(70, Refusal.MALFORMED)]


async def test_meter_without_an_authority_refuses_everything_as_not_supported(clock: StepClock) -> None:
    bare = SimulatedMeter(MeterConfig(SERIAL, SERVER_TITLE, GUEK, GAK, profile_days=1), now=clock)
    server = await serve_meter(bare, "127.0.0.1", 0)
    settings = ClientSettings.management(
        "127.0.0.1", server.sockets[0].getsockname()[1], system_title=CLIENT_TITLE, guek=GUEK, gak=GAK, timeout_s=5.0
    )
    try:
        async with DlmsClient(settings) as client:
            with pytest.raises(ServiceError) as refused:
                await _execute(client, _signed(clock, Command.DISCONNECT, 1))
            record = RefusalRecord.from_data(await client.get(obis.COMMAND_GATEWAY, GATEWAY, 4))
            fingerprint = await client.get(obis.COMMAND_GATEWAY, GATEWAY, 2)
    finally:
        await close_servers([server])
    assert refused.value.result == Result.TEMPORARY_FAILURE
    assert (record.reason, record.counter) == (Refusal.NOT_SUPPORTED, None)
    assert fingerprint is None
    assert bare.disconnect.output_state is True
    assert _events(bare, EventCode.COMMAND_REFUSED) == [(70, Refusal.NOT_SUPPORTED)]


async def test_open_switch_registers_no_consumption(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    async with DlmsClient(management()) as client:
        await _execute(client, _signed(clock, Command.DISCONNECT, 1))
    opened = clock.at.timestamp()
    first_dark_end = int(opened) - int(opened) % INTERVAL_S + 2 * INTERVAL_S  # the first whole interval open
    clock.at += timedelta(hours=2)
    async with DlmsClient(management(invocation_counter=100)) as client:
        dark_start, _ = await client.read_register(obis.ACTIVE_IMPORT)
        clock.at += timedelta(hours=1)
        dark_end, _ = await client.read_register(obis.ACTIVE_IMPORT)
        power, _ = await client.read_register(obis.INSTANT_POWER)
        current, _ = await client.read_register(obis.INSTANT_CURRENT)
        await _execute(client, _signed(clock, Command.RECONNECT, 2))
        clock.at += timedelta(hours=1)
        lit, _ = await client.read_register(obis.ACTIVE_IMPORT)
    assert dark_end == dark_start  # nothing registered while open
    assert (power, current) == (0, 0)
    assert lit > dark_end  # the load model draws every interval once the supply is back
    rows = meter.energy.rows(first_dark_end, first_dark_end + 8 * INTERVAL_S)
    assert rows.count == 9
    imports = {
        meter.energy.registers_at(end)[0] for end in range(first_dark_end, first_dark_end + 9 * INTERVAL_S, INTERVAL_S)
    }
    assert len(imports) == 1  # the profile is flat over the dark intervals


async def test_load_side_voltage_shows_backfeed_while_open(
    management: Callable[..., ClientSettings], meter: SimulatedMeter, clock: StepClock
) -> None:
    async with DlmsClient(management()) as client:
        await _execute(client, _signed(clock, Command.DISCONNECT, 1))
        dead, _ = await client.read_register(obis.LOAD_SIDE_VOLTAGE)
        _apply(meter, "backfeed", on=True)
        fed, _ = await client.read_register(obis.LOAD_SIDE_VOLTAGE)
        supply, _ = await client.read_register(obis.INSTANT_VOLTAGE)
    assert dead == 0
    assert 215 < fed < 235
    assert 220 < supply < 240


async def test_switch_opening_without_command_is_an_event_without_counter(meter: SimulatedMeter) -> None:
    _apply(meter, "open-switch")
    _apply(meter, "open-switch")  # already open: no second event
    assert meter.disconnect.output_state is False
    assert _events(meter, EventCode.SWITCH_OPENED) == [(60, None)]


@pytest.mark.parametrize(
    ("name", "params"), [("backfeed", {}), ("set-demand", {"watts": -1}), ("set-demand", {"watts": "x"})]
)
def test_switch_operations_refuse_bad_parameters(name: str, params: dict[str, object], meter: SimulatedMeter) -> None:
    with pytest.raises(control.UnknownOperation):
        _apply(meter, name, **params)
