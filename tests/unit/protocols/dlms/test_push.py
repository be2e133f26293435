"""Pushed event notifications (contract "Push wire format"): round trip, authentication, replay, bad input."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openami.protocols.dlms.apdu import DataNotification, decode_apdu
from openami.protocols.dlms.errors import AuthenticationTagError, DecodeError, DlmsError, EncodeError, ReplayError
from openami.protocols.dlms.push import (
    PUSH_DEST_WPORT,
    PUSH_SOURCE_WPORT,
    PushedEvent,
    UnknownSourceError,
    decode_push,
    encode_push,
    encode_push_apdu,
    push_system_title,
)
from openami.protocols.dlms.security import cipher_general_glo, decipher_apdu
from openami.protocols.dlms.wrapper import WrapperFramer

GUEK = bytes(range(16))
GAK = bytes(range(16, 32))
OTHER = bytes(range(32, 48))
TITLE = b"OAM\x00\x00\x00\x00\x07"
NOW = datetime(2026, 11, 22, 7, 30, 15, 250_000, tzinfo=UTC)
EVENTS = (
    PushedEvent(NOW - timedelta(seconds=2), 1, None),
    PushedEvent(NOW - timedelta(seconds=1), 10, 187.25),
)


def _frame(counter: int = 41, *, events: Sequence[PushedEvent] = EVENTS, sequence: int = 9) -> bytes:
    return encode_push(
        events, system_title=TITLE, invocation_counter=counter, guek=GUEK, gak=GAK, sequence=sequence, meter_time=NOW
    )


def _keys(title: bytes) -> list[tuple[bytes, bytes]]:
    return [(GUEK, GAK)] if title == TITLE else []


def _decode(data: bytes, *, last: int = -1, keys: object = _keys) -> object:
    return decode_push(data, keys_for=keys, last_counter_for=lambda _title: last)  # type: ignore[arg-type]


def _apdu(frame: bytes) -> bytes:
    framer = WrapperFramer()
    framer.feed(frame)
    got = framer.next_frame()
    assert got is not None
    assert (got.source_wport, got.dest_wport) == (PUSH_SOURCE_WPORT, PUSH_DEST_WPORT)
    return got.apdu


def test_push_round_trip_keeps_title_counter_sequence_times_and_values() -> None:
    decoded = decode_push(_apdu(_frame()), keys_for=_keys, last_counter_for=lambda _t: 40)
    assert decoded.system_title == TITLE
    assert decoded.invocation_counter == 41
    assert decoded.sequence == 9
    assert decoded.meter_time == NOW.replace(microsecond=250_000)
    assert decoded.events == EVENTS


def test_push_is_general_glo_ciphering_authenticated_and_encrypted_data_notification() -> None:
    apdu = _apdu(_frame())
    assert apdu[0] == 0xDB
    opened = decipher_apdu(apdu, system_title=TITLE, ek=GUEK, ak=GAK)
    assert opened.security_control == 0x30
    notification = decode_apdu(opened.plaintext)
    assert isinstance(notification, DataNotification)
    assert notification.body[0] == bytes((0, 0, 25, 9, 0, 255))  # type: ignore[index]
    assert b"\x00\x00\x19\x09\x00\xff" not in apdu  # the body is encrypted, not only authenticated


def test_push_decoder_also_takes_the_whole_wrapper_frame() -> None:
    assert _decode(_frame()) == _decode(_apdu(_frame()))


def test_push_under_the_pending_key_is_accepted_after_the_active_one_fails() -> None:
    def keys(_title: bytes) -> list[tuple[bytes, bytes]]:
        return [(OTHER, GAK), (GUEK, GAK)]

    assert decode_push(_frame(), keys_for=keys, last_counter_for=lambda _t: -1).events == EVENTS


def test_push_under_a_wrong_key_is_rejected() -> None:
    with pytest.raises(AuthenticationTagError):
        _decode(_frame(), keys=lambda _title: [(OTHER, GAK)])


def test_push_with_an_altered_byte_is_rejected() -> None:
    frame = bytearray(_frame())
    frame[-5] ^= 0x01
    with pytest.raises(AuthenticationTagError):
        _decode(bytes(frame))


@pytest.mark.parametrize("last", [41, 42, 1000])
def test_push_with_a_counter_not_above_the_last_accepted_is_a_replay(last: int) -> None:
    with pytest.raises(ReplayError):
        _decode(_frame(41), last=last)


def test_push_from_an_unregistered_title_is_an_unknown_source() -> None:
    with pytest.raises(UnknownSourceError):
        _decode(_frame(), keys=lambda _title: [])


def test_push_system_title_is_readable_before_deciphering() -> None:
    assert push_system_title(_frame()) == TITLE


def test_push_with_no_events_round_trips() -> None:
    assert _decode(_frame(events=())).events == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("event", "sequence"),
    [
        (PushedEvent(NOW, 70_000, None), 1),
        (PushedEvent(NOW, 1, float("nan")), 1),
        (PushedEvent(NOW, 1, None), 0x1000000),
    ],
)
def test_push_encoder_refuses_values_it_cannot_carry(event: PushedEvent, sequence: int) -> None:
    with pytest.raises(EncodeError):
        encode_push_apdu(
            [event], system_title=TITLE, invocation_counter=1, guek=GUEK, gak=GAK, sequence=sequence, meter_time=NOW
        )


def test_ciphered_push_that_is_not_a_data_notification_is_a_decode_error() -> None:
    apdu = cipher_general_glo(
        b"\xc4\x01\xc1\x00\x00", security_control=0x30, system_title=TITLE, invocation_counter=3, ek=GUEK, ak=GAK
    )
    with pytest.raises(DecodeError):
        _decode(apdu)


def test_authentication_only_push_is_refused() -> None:
    plain = decipher_apdu(_apdu(_frame()), system_title=TITLE, ek=GUEK, ak=GAK).plaintext
    apdu = cipher_general_glo(plain, security_control=0x10, system_title=TITLE, invocation_counter=50, ek=GUEK, ak=GAK)
    with pytest.raises(DlmsError):
        _decode(apdu)


@pytest.mark.parametrize("cut", [0, 1, 2, 8, 10, 20, -13, -1])
def test_truncated_push_raises_only_protocol_errors(cut: int) -> None:
    frame = _frame()
    with pytest.raises(DlmsError):
        _decode(frame[:cut])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(DlmsError):
        _decode(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_pushes_raise_only_protocol_errors(data: st.DataObject) -> None:
    frame = bytearray(_frame())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DlmsError):
        _decode(bytes(frame))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_validly_ciphered_but_mangled_notifications_raise_only_protocol_errors(data: st.DataObject) -> None:
    """The tag verifies, so the Data-Notification decoder itself meets the mangled bytes."""
    plain = bytearray(decipher_apdu(_apdu(_frame()), system_title=TITLE, ek=GUEK, ak=GAK).plaintext)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(plain) - 1))
        plain[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(plain)))
    apdu = cipher_general_glo(
        bytes(plain[:cut]), security_control=0x30, system_title=TITLE, invocation_counter=99, ek=GUEK, ak=GAK
    )
    with contextlib.suppress(DlmsError):
        _decode(apdu)
