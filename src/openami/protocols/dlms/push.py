"""Pushed event notifications: build them (meter side) and open them (head-end side), sans-IO.

The wire format is openami's contract ("Push wire format", docs/internal/contracts.md): one
IEC 62056-47 wrapper frame per notification (source wPort 1, destination wPort 102) carrying a
general-glo-ciphering APDU (``DB``, Green Book 9.2.7.2.4) with the meter's system title, security
control 0x30 (authenticated and encrypted) and the meter's own next invocation counter. Inside is a
Data-Notification (``0F``, IEC 62056-5-3 clause 6.9 / DLMS UA 1000-2 "DataNotification service")::

    long-invoke-id-and-priority = push sequence number (24-bit invoke id)
    date-time                   = the meter's clock (12 bytes)
    notification-body           = structure {
        octet-string   logical name of the Push Setup (0.0.25.9.0.255),
        array of structure {octet-string date-time (12), long-unsigned event code,
                            null-data | float64 value}}

``decode_push`` accepts a notification only when its source is known (``keys_for`` gives keys),
its tag verifies under one of those keys and its invocation counter is above the last one accepted
from that source (``last_counter_for``). Every failure is a ``DlmsError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from openami.protocols.dlms.apdu import DataNotification, decode_apdu
from openami.protocols.dlms.axdr import decode_length
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.datatypes import Array, Float64, LongUnsigned, Structure
from openami.protocols.dlms.errors import AuthenticationTagError, DecodeError, DlmsError, EncodeError, SecurityError
from openami.protocols.dlms.obis import PUSH_SETUP
from openami.protocols.dlms.security import (
    GENERAL_GLO_CIPHERING,
    ReplayGuard,
    SecurityControl,
    Suite0,
)
from openami.protocols.dlms.wrapper import HEADER_SIZE, WRAPPER_VERSION, WrapperHeader, encode_wrapper

__all__ = [
    "MAX_EVENTS_PER_PUSH",
    "MAX_SEQUENCE",
    "PUSH_DEST_WPORT",
    "PUSH_SECURITY_CONTROL",
    "PUSH_SOURCE_WPORT",
    "DecodedPush",
    "PushedEvent",
    "UnknownSourceError",
    "decode_push",
    "encode_push",
    "encode_push_apdu",
    "push_system_title",
]

PUSH_SOURCE_WPORT = 1
"""The meter's management logical device."""
PUSH_DEST_WPORT = 102
"""The head-end's push listener (the contract's destination wPort)."""
PUSH_SECURITY_CONTROL = int(SecurityControl.AUTHENTICATED | SecurityControl.ENCRYPTED)  # 0x30
MAX_SEQUENCE = 0xFFFFFF
"""The invoke-id part of long-invoke-id-and-priority is 24 bits; the top byte carries flags."""
MAX_EVENTS_PER_PUSH = 1000
"""More events than this in one notification is refused both ways (a bound for the decoder)."""

_TIME_LENGTH = 12


class UnknownSourceError(SecurityError):
    """A notification whose system title is not a registered meter's (no keys to check it with)."""


@dataclass(frozen=True, slots=True)
class PushedEvent:
    """One event as a meter pushes it: its own time stamp (aware UTC), the code, an optional value."""

    time: datetime
    code: int
    value: float | None = None


@dataclass(frozen=True, slots=True)
class DecodedPush:
    """An authenticated, fresh notification: who sent it, its counter and sequence, what it says."""

    system_title: bytes
    invocation_counter: int
    sequence: int
    meter_time: datetime
    events: tuple[PushedEvent, ...]


# --------------------------------------------------------------------------------------------- encode


def _event_structure(event: PushedEvent) -> Structure:
    if not 0 <= event.code <= 0xFFFF:
        raise EncodeError(f"event code {event.code} is not a long-unsigned")
    value: Float64 | None = None
    if event.value is not None:
        if not math.isfinite(event.value):
            raise EncodeError(f"event value {event.value!r} is not a finite number")
        value = Float64(event.value)
    stamp = CosemDateTime.from_datetime(event.time).to_bytes()
    return Structure((stamp, LongUnsigned(event.code), value))


def encode_push_apdu(
    events: Sequence[PushedEvent],
    *,
    system_title: bytes,
    invocation_counter: int,
    guek: bytes,
    gak: bytes,
    sequence: int,
    meter_time: datetime,
) -> bytes:
    """The ciphered notification APDU (``DB ...``) for ``events``; EncodeError/SecurityError on bad input."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise EncodeError(f"push sequence {sequence} is not 0-{MAX_SEQUENCE}")
    if len(events) > MAX_EVENTS_PER_PUSH:
        raise EncodeError(f"{len(events)} events in one notification (at most {MAX_EVENTS_PER_PUSH})")
    body = Structure((PUSH_SETUP.to_bytes(), Array(_event_structure(event) for event in events)))
    plain = DataNotification(body, sequence, CosemDateTime.from_datetime(meter_time).to_bytes()).encode()
    return Suite0(guek, gak).cipher_general_glo(
        plain,
        security_control=PUSH_SECURITY_CONTROL,
        system_title=system_title,
        invocation_counter=invocation_counter,
    )


def encode_push(
    events: Sequence[PushedEvent],
    *,
    system_title: bytes,
    invocation_counter: int,
    guek: bytes,
    gak: bytes,
    sequence: int,
    meter_time: datetime,
) -> bytes:
    """The whole wrapper frame a meter sends for one notification (see the module docstring)."""
    apdu = encode_push_apdu(
        events,
        system_title=system_title,
        invocation_counter=invocation_counter,
        guek=guek,
        gak=gak,
        sequence=sequence,
        meter_time=meter_time,
    )
    return encode_wrapper(PUSH_SOURCE_WPORT, PUSH_DEST_WPORT, apdu)


# --------------------------------------------------------------------------------------------- decode


def _strip_wrapper(data: bytes) -> bytes:
    """Accept a whole wrapper frame as well as its APDU (a ciphered APDU never starts with 0x00)."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != WRAPPER_VERSION:
        return data
    header = WrapperHeader.from_bytes(data)
    if header.length != len(data) - HEADER_SIZE:
        raise DecodeError(
            f"wrapper length {header.length} with {len(data) - HEADER_SIZE} APDU bytes",
            offset=6,
            expected="one whole wrapper frame",
        )
    return data[HEADER_SIZE:]


def push_system_title(apdu: bytes) -> bytes:
    """The sender's system title from a general-glo-ciphering APDU (or its wrapper frame), unverified.

    Useful to look the meter up before anything is deciphered; DecodeError when it is not a ``DB`` APDU.
    """
    data = _strip_wrapper(bytes(apdu))
    if not data or data[0] != GENERAL_GLO_CIPHERING:
        raise DecodeError(
            f"push APDU tag 0x{data[0]:02X}" if data else "empty push APDU",
            offset=0,
            expected="general-glo-ciphering (0xDB)",
        )
    length, pos = decode_length(data, 1)
    if length != 8 or pos + 8 > len(data):
        raise DecodeError(f"system title of {length} bytes", offset=1, expected="8 bytes")
    return data[pos : pos + 8]


def _open(data: bytes, title: bytes, keys: Sequence[tuple[bytes, bytes]], last_counter: int) -> tuple[int, bytes]:
    """(invocation counter, plaintext) under the first key pair whose tag verifies."""
    failure: DlmsError = AuthenticationTagError("push does not verify under the meter's keys")
    for guek, gak in keys:
        try:
            opened = Suite0(guek, gak).decipher(data, system_title=title, replay_guard=ReplayGuard(last_counter))
        except AuthenticationTagError as exc:
            failure = exc
            continue
        if opened.security_control != PUSH_SECURITY_CONTROL:
            raise SecurityError(f"push with security control 0x{opened.security_control:02X} (0x30 required)")
        return opened.invocation_counter, opened.plaintext
    raise failure


def _time(stamp: object, what: str) -> datetime:
    if not isinstance(stamp, bytes) or len(stamp) != _TIME_LENGTH:
        raise DecodeError(f"{what} is not a 12-byte date-time", offset=0, expected="octet-string date-time")
    try:
        return CosemDateTime.from_bytes(stamp).to_datetime()
    except DecodeError:
        raise
    except DlmsError as exc:
        raise DecodeError(
            f"{what} is not a concrete instant: {exc}", offset=0, expected="a specified date-time"
        ) from None


def _event(item: object) -> PushedEvent:
    if not isinstance(item, Structure) or len(item) != 3:
        raise DecodeError("event entry is not a 3-element structure", offset=0, expected="{time, code, value}")
    stamp, code, value = item
    if not isinstance(code, LongUnsigned):
        raise DecodeError("event code is not a long-unsigned", offset=0, expected="long-unsigned")
    if value is not None and not (isinstance(value, Float64) and math.isfinite(value)):
        raise DecodeError("event value is neither null nor a finite float64", offset=0, expected="null-data or float64")
    return PushedEvent(_time(stamp, "event time"), int(code), None if value is None else float(value))


def _events(body: object) -> tuple[PushedEvent, ...]:
    if not isinstance(body, Structure) or len(body) != 2:
        raise DecodeError("notification body is not a 2-element structure", offset=0, expected="{push setup, events}")
    name, items = body
    if name != PUSH_SETUP.to_bytes():
        raise DecodeError("notification does not name the Push Setup", offset=0, expected="0.0.25.9.0.255")
    if not isinstance(items, Array) or len(items) > MAX_EVENTS_PER_PUSH:
        raise DecodeError("notification events are not a bounded array", offset=0, expected="array of events")
    return tuple(_event(item) for item in items)


def decode_push(
    apdu: bytes,
    *,
    keys_for: Callable[[bytes], Sequence[tuple[bytes, bytes]]],
    last_counter_for: Callable[[bytes], int],
) -> DecodedPush:
    """Verify and read one pushed notification (the APDU, or its whole wrapper frame).

    ``keys_for(system_title)`` gives the sender's ``(guek, gak)`` pairs to try (active, then
    pending; empty when the title is not a registered meter's), ``last_counter_for(system_title)``
    the last invocation counter accepted from its pushes (-1 when none). The caller records the
    returned ``invocation_counter`` as the new last one. Raises UnknownSourceError, ReplayError,
    AuthenticationTagError, SecurityError or DecodeError (all DlmsError); nothing is returned from
    a notification that does not verify.
    """
    data = _strip_wrapper(bytes(apdu))
    title = push_system_title(data)
    keys = keys_for(title)
    if not keys:
        raise UnknownSourceError("push from a system title that is not a registered meter's")
    counter, plain = _open(data, title, keys, last_counter_for(title))
    notification = decode_apdu(plain)
    if not isinstance(notification, DataNotification):
        raise DecodeError("ciphered push is not a Data-Notification", offset=0, expected="0x0F")
    return DecodedPush(
        system_title=title,
        invocation_counter=counter,
        sequence=notification.long_invoke_id_and_priority & MAX_SEQUENCE,
        meter_time=_time(notification.date_time, "notification date-time"),
        events=_events(notification.body),
    )
