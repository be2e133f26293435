"""Signed switch commands: envelope encoding, ECDSA P-256 signatures and the meter's verification order."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openami.protocols.dlms import axdr
from openami.protocols.dlms.errors import DecodeError, DlmsError, EncodeError
from openami.protocols.dlms.signed_command import (
    BROADCAST_TARGET,
    Command,
    CommandRefused,
    Confirmation,
    Envelope,
    LimitParameters,
    Refusal,
    RefusalRecord,
    SignedCommand,
    decode_envelope,
    encode_envelope,
    sign_envelope,
    signature_from_der,
    signature_to_der,
    verify_signed_command,
)

from .test_fuzz_decoders import mutated

TITLE = b"OAM\x00\x00\x00\x00\x07"
OTHER_TITLE = b"OAM\x00\x00\x00\x00\x08"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AUTHORITY = ec.generate_private_key(ec.SECP256R1())
INTRUDER = ec.generate_private_key(ec.SECP256R1())


def _envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "target": TITLE,
        "command": Command.DISCONNECT,
        "counter": 10,
        "not_before": NOW - timedelta(minutes=1),
        "not_after": NOW + timedelta(minutes=5),
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def _verify(cmd: SignedCommand, *, last_counter: int = 9, now: datetime = NOW) -> Envelope:
    return verify_signed_command(
        cmd, public_key=AUTHORITY.public_key(), own_title=TITLE, last_counter=last_counter, now=now
    )


def _refusal(cmd: SignedCommand, **kwargs: object) -> Refusal:
    with pytest.raises(CommandRefused) as caught:
        _verify(cmd, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)).map(
    lambda dt: dt.replace(microsecond=0)
)
limits = st.builds(
    LimitParameters,
    threshold_w=st.integers(1, 0xFFFFFFFF),
    duration_s=st.integers(0, 0xFFFFFFFF),
    emergency=st.booleans(),
)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    command = draw(st.sampled_from(Command))
    broadcast = command in (Command.IGNORE_DISCONNECTS_ON, Command.IGNORE_DISCONNECTS_OFF) and draw(st.booleans())
    start = draw(instants)
    return Envelope(
        target=BROADCAST_TARGET if broadcast else draw(st.binary(min_size=8, max_size=8)),
        command=command,
        counter=draw(st.integers(0, 2**64 - 1)),
        not_before=start,
        not_after=start + timedelta(seconds=draw(st.integers(0, 10**7))),
        limit=draw(limits) if command is Command.SET_LIMIT else None,
    )


@settings(max_examples=200)
@given(envelopes())
def test_envelope_round_trips_through_its_axdr_bytes(envelope: Envelope) -> None:
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_envelope_byte_layout_is_the_documented_structure() -> None:
    envelope = _envelope(command=Command.SET_LIMIT, limit=LimitParameters(3000, 60, emergency=True))
    data = encode_envelope(envelope)
    assert data[:2] == b"\x02\x07"  # structure of seven
    assert data[2:4] == b"\x11\x01"  # unsigned version 1
    assert data[4:14] == b"\x09\x08" + TITLE
    assert data[14:16] == b"\x16\x04"  # enum SET_LIMIT
    assert data[16:25] == b"\x15" + (10).to_bytes(8, "big")
    assert data[25] == 0x19  # date-time
    assert data[-14:] == b"\x02\x03\x06" + (3000).to_bytes(4, "big") + b"\x06" + (60).to_bytes(4, "big") + b"\x03\x01"


def test_envelope_keeps_utc_whole_seconds_so_it_equals_its_decoded_form() -> None:
    paris = datetime(2026, 3, 1, 13, 0, 0, 750_000).astimezone()
    envelope = _envelope(not_before=paris, not_after=paris + timedelta(hours=1))
    assert envelope.not_before.tzinfo is UTC
    assert envelope.not_before.microsecond == 0
    assert decode_envelope(encode_envelope(envelope)) == envelope


@pytest.mark.parametrize(
    "changes",
    [
        {"target": b"short"},
        {"counter": -1},
        {"counter": 2**64},
        {"not_before": datetime(2026, 1, 1)},
        {"not_after": NOW - timedelta(hours=1)},
        {"command": Command.SET_LIMIT},  # limit missing
        {"limit": LimitParameters(100, 10)},  # limit on a disconnect
        {"target": BROADCAST_TARGET},  # a disconnect cannot be broadcast
        {"version": 2},
    ],
)
def test_an_inconsistent_envelope_cannot_be_built(changes: dict[str, object]) -> None:
    with pytest.raises(EncodeError):
        _envelope(**changes)


@pytest.mark.parametrize("threshold", [0, -1, 2**32])
def test_limit_parameters_are_checked(threshold: int) -> None:
    with pytest.raises(EncodeError):
        LimitParameters(threshold, 10)


def test_signature_is_64_raw_bytes_and_converts_to_and_from_der() -> None:
    signed = sign_envelope(_envelope(), AUTHORITY)
    assert len(signed.signature) == 64
    der = signature_to_der(signed.signature)
    assert der[0] == 0x30  # DER SEQUENCE
    assert signature_from_der(der) == signed.signature
    AUTHORITY.public_key().verify(der, signed.envelope, ec.ECDSA(hashes.SHA256()))


def test_der_signature_with_short_coordinates_becomes_zero_padded_raw() -> None:
    raw = b"\x00" * 31 + b"\x05" + b"\x00" * 2 + b"\x7f" * 30
    assert signature_from_der(signature_to_der(raw)) == raw


def test_raw_signature_of_wrong_length_is_refused() -> None:
    with pytest.raises(EncodeError):
        signature_to_der(bytes(63))


def test_signing_with_a_key_on_another_curve_is_refused() -> None:
    with pytest.raises(EncodeError):
        sign_envelope(_envelope(), ec.generate_private_key(ec.SECP384R1()))


def test_signed_command_round_trips_as_action_parameters() -> None:
    signed = sign_envelope(_envelope(), AUTHORITY)
    parameters = axdr.decode_all(axdr.encode(signed.to_parameters()))
    assert SignedCommand.from_parameters(parameters) == signed


@pytest.mark.parametrize(
    "parameters",
    [None, b"x", axdr.Structure((b"a",)), axdr.Structure((b"a", axdr.Unsigned(1))), axdr.Array([b"a", b"b"])],
)
def test_malformed_action_parameters_raise_decode_error(parameters: axdr.Data) -> None:
    with pytest.raises(DecodeError):
        SignedCommand.from_parameters(parameters)


def test_valid_command_verifies_and_returns_its_envelope() -> None:
    envelope = _envelope()
    assert _verify(sign_envelope(envelope, AUTHORITY)) == envelope


def test_window_edges_are_inclusive() -> None:
    envelope = _envelope()
    signed = sign_envelope(envelope, AUTHORITY)
    assert _verify(signed, now=envelope.not_before) == envelope
    assert _verify(signed, now=envelope.not_after) == envelope


def test_forged_signature_is_refused() -> None:
    assert _refusal(sign_envelope(_envelope(), INTRUDER)) is Refusal.BAD_SIGNATURE


def test_tampered_envelope_is_refused_as_bad_signature() -> None:
    signed = sign_envelope(_envelope(), AUTHORITY)
    tampered = encode_envelope(_envelope(counter=11))
    assert _refusal(SignedCommand(tampered, signed.signature)) is Refusal.BAD_SIGNATURE


def test_other_meters_command_is_refused() -> None:
    assert _refusal(sign_envelope(_envelope(target=OTHER_TITLE), AUTHORITY)) is Refusal.WRONG_METER


def test_broadcast_is_accepted_for_ignore_disconnects() -> None:
    for command in (Command.IGNORE_DISCONNECTS_ON, Command.IGNORE_DISCONNECTS_OFF):
        envelope = _envelope(target=BROADCAST_TARGET, command=command)
        assert _verify(sign_envelope(envelope, AUTHORITY)) == envelope


def test_broadcast_disconnect_signed_by_hand_is_refused_as_wrong_meter() -> None:
    # Envelope() refuses to build one, so craft the bytes directly: the meter must refuse them too.
    data = bytearray(encode_envelope(_envelope()))
    data[6:14] = BROADCAST_TARGET
    with pytest.raises(DecodeError):
        decode_envelope(bytes(data))
    der = AUTHORITY.sign(bytes(data), ec.ECDSA(hashes.SHA256()))
    forged = SignedCommand(bytes(data), signature_from_der(der))
    assert _refusal(forged) is Refusal.MALFORMED


def test_expired_command_is_refused() -> None:
    signed = sign_envelope(_envelope(), AUTHORITY)
    assert _refusal(signed, now=NOW + timedelta(minutes=5, seconds=1)) is Refusal.EXPIRED


def test_not_yet_valid_command_is_refused() -> None:
    signed = sign_envelope(_envelope(), AUTHORITY)
    assert _refusal(signed, now=NOW - timedelta(minutes=1, seconds=1)) is Refusal.NOT_YET_VALID


@pytest.mark.parametrize("last_counter", [10, 11, 2**40])
def test_replayed_or_older_counter_is_refused(last_counter: int) -> None:
    assert _refusal(sign_envelope(_envelope(), AUTHORITY), last_counter=last_counter) is Refusal.REPLAYED


def test_malformed_envelope_is_refused_even_when_signed() -> None:
    data = axdr.encode(axdr.Structure((axdr.Unsigned(1), TITLE)))
    der = AUTHORITY.sign(data, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(CommandRefused) as caught:
        _verify(SignedCommand(data, signature_from_der(der)))
    assert caught.value.reason is Refusal.MALFORMED
    assert caught.value.counter is None


def test_signature_of_wrong_length_is_malformed() -> None:
    signed = sign_envelope(_envelope(), AUTHORITY)
    with pytest.raises(CommandRefused) as caught:
        _verify(SignedCommand(signed.envelope, signed.signature + b"\x00"))
    assert caught.value.reason is Refusal.MALFORMED
    assert caught.value.counter == 10


def test_checks_run_in_the_contract_order() -> None:
    # Forged AND for another meter AND expired AND replayed: the signature is checked first.
    everything_wrong = sign_envelope(_envelope(target=OTHER_TITLE), INTRUDER)
    assert _refusal(everything_wrong, now=NOW + timedelta(days=1), last_counter=99) is Refusal.BAD_SIGNATURE
    # Genuine but for another meter, expired and replayed: the target comes next.
    other_meter = sign_envelope(_envelope(target=OTHER_TITLE), AUTHORITY)
    assert _refusal(other_meter, now=NOW + timedelta(days=1), last_counter=99) is Refusal.WRONG_METER
    # Ours, expired and replayed: the window before the counter.
    assert _refusal(sign_envelope(_envelope(), AUTHORITY), now=NOW + timedelta(days=1), last_counter=99) is (
        Refusal.EXPIRED
    )


def test_limit_parameters_out_of_range_on_the_wire_are_malformed() -> None:
    data = bytearray(encode_envelope(_envelope(command=Command.SET_LIMIT, limit=LimitParameters(3000, 60))))
    # threshold_w = 0 is not a limit; the envelope is signed, so only the decoder can catch it
    at = data.index(b"\x02\x03\x06") + 3
    data[at : at + 4] = bytes(4)
    der = AUTHORITY.sign(bytes(data), ec.ECDSA(hashes.SHA256()))
    assert _refusal(SignedCommand(bytes(data), signature_from_der(der))) is Refusal.MALFORMED


@settings(max_examples=100)
@given(
    st.booleans(),
    st.integers(0, 2),
    st.floats(allow_nan=False),
    st.floats(allow_nan=False),
    st.floats(allow_nan=False),
    st.none() | st.integers(0, 0xFFFFFFFF),
)
def test_confirmation_round_trips(
    output: bool, control: int, voltage: float, current: float, load_side: float, threshold: int | None
) -> None:
    confirmation = Confirmation(output, control, voltage, current, load_side, threshold)
    data = axdr.decode_all(axdr.encode(confirmation.to_data()))
    assert Confirmation.from_data(data) == confirmation


def test_refusal_record_round_trips() -> None:
    for counter in (None, 0, 2**64 - 1):
        record = RefusalRecord(counter, Refusal.REPLAYED, NOW)
        assert RefusalRecord.from_data(axdr.decode_all(axdr.encode(record.to_data()))) == record


def _seeds() -> list[bytes]:
    limit = _envelope(command=Command.SET_LIMIT, limit=LimitParameters(3000, 60))
    return [encode_envelope(_envelope()), encode_envelope(limit)]


def _feed(data: bytes) -> None:
    """Anything but DlmsError escaping from here fails the test."""
    public = AUTHORITY.public_key()
    with contextlib.suppress(DlmsError):
        decode_envelope(data)
    with contextlib.suppress(DlmsError):
        verify_signed_command(
            SignedCommand(data, bytes(64)), public_key=public, own_title=TITLE, last_counter=0, now=NOW
        )
    for reader in (SignedCommand.from_parameters, Confirmation.from_data, RefusalRecord.from_data):
        with contextlib.suppress(DlmsError):
            reader(axdr.decode_all(data))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120))
def test_decoders_raise_only_protocol_errors_on_random_bytes(data: bytes) -> None:
    _feed(data)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(st.sampled_from(_seeds())))
def test_decoders_raise_only_protocol_errors_on_mutated_envelopes(data: bytes) -> None:
    _feed(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.none(), st.booleans(), st.binary(max_size=10)), min_size=1, max_size=8),
    st.sampled_from(_seeds()),
)
def test_structures_of_wrong_shape_raise_only_decode_error(items: list[axdr.Data], seed: bytes) -> None:
    fields = list(axdr.decode_all(seed))  # type: ignore[arg-type]
    for index, item in enumerate(items[: len(fields)]):
        fields[index] = item
    with pytest.raises(DlmsError):
        decode_envelope(axdr.encode(axdr.Structure(fields + items[len(fields) :])))
