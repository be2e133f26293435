"""xDLMS service APDUs with logical-name referencing (IEC 62056-5-3 clause 9.3, A-XDR encoded).

Each APDU is a frozen dataclass with ``encode() -> bytes``; ``decode_apdu(buf)`` dispatches on the
first byte (and on the service-choice byte for GET/SET/ACTION), decodes the ACSE APDUs via
``acse`` and returns ciphered APDUs as opaque ``CipheredApdu`` for ``security.decipher_apdu``.
The invoke-id-and-priority byte is explicit (default 0xC1: high priority, confirmed, invoke id 1).
Values inside are A-XDR ``Data`` (see ``axdr``); malformed input raises DecodeError only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from openami.protocols.dlms.acse import AARE, AARQ, RLRE, RLRQ
from openami.protocols.dlms.apdu_types import (
    ActionResult,
    AttributeDescriptor,
    Cursor,
    DataAccessResult,
    ExceptionServiceError,
    ExceptionStateError,
    MethodDescriptor,
    SelectiveAccess,
    decode_data_result,
    encode_get_data_result,
    encode_optional_access,
)
from openami.protocols.dlms.axdr import Data, encode, encode_length
from openami.protocols.dlms.errors import DecodeError, EncodeError

__all__ = [
    "CIPHERED_TAGS",
    "DEFAULT_INVOKE_ID_AND_PRIORITY",
    "ActionRequestNormal",
    "ActionResponseNormal",
    "ActionResult",
    "Apdu",
    "AttributeDescriptor",
    "CipheredApdu",
    "DataAccessResult",
    "DataNotification",
    "EventNotificationRequest",
    "ExceptionResponse",
    "ExceptionServiceError",
    "ExceptionStateError",
    "GetRequestNext",
    "GetRequestNormal",
    "GetRequestWithList",
    "GetResponseNormal",
    "GetResponseWithDataBlock",
    "GetResponseWithList",
    "MethodDescriptor",
    "SelectiveAccess",
    "SetRequestNormal",
    "SetResponseNormal",
    "decode_apdu",
    "decode_data_result",
]

DEFAULT_INVOKE_ID_AND_PRIORITY = 0xC1

CIPHERED_TAGS = frozenset(
    (
        *(0x21, 0x28, 0x2E),  # glo-initiateRequest, glo-initiateResponse, glo-confirmedServiceError
        *(0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCF),  # glo-get/set/event-notification/action req. and resp.
        *(0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD7),  # ded- forms of the same
        *(0xDB, 0xDC, 0xDD),  # general-glo-ciphering, general-ded-ciphering, general-ciphering
    )
)


def _iip(value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise EncodeError(f"invoke-id-and-priority {value} is not one byte")
    return value


def _list_results(results: tuple[Data | DataAccessResult, ...]) -> bytes:
    return encode_length(len(results)) + b"".join(encode_get_data_result(r) for r in results)


# ---------------------------------------------------------------------------------------------- GET


@dataclass(frozen=True, slots=True)
class GetRequestNormal:
    """GET-Request-Normal ``C0 01``: one attribute, optionally with selective access."""

    descriptor: AttributeDescriptor
    access: SelectiveAccess | None = None
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        return (
            bytes((0xC0, 0x01, _iip(self.invoke_id_and_priority)))
            + self.descriptor.encode()
            + encode_optional_access(self.access)
        )


@dataclass(frozen=True, slots=True)
class GetRequestNext:
    """GET-Request-Next ``C0 02``: ask for the block after ``block_number``."""

    block_number: int
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        if not 0 <= self.block_number <= 0xFFFFFFFF:
            raise EncodeError(f"block number {self.block_number} is not an Unsigned32")
        return bytes((0xC0, 0x02, _iip(self.invoke_id_and_priority))) + self.block_number.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class GetRequestWithList:
    """GET-Request-With-List ``C0 03``: several attributes, each with optional selective access."""

    items: tuple[tuple[AttributeDescriptor, SelectiveAccess | None], ...]
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        body = b"".join(d.encode() + encode_optional_access(a) for d, a in self.items)
        return bytes((0xC0, 0x03, _iip(self.invoke_id_and_priority))) + encode_length(len(self.items)) + body


@dataclass(frozen=True, slots=True)
class GetResponseNormal:
    """GET-Response-Normal ``C4 01``: the attribute's value, or why it could not be read."""

    result: Data | DataAccessResult
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        return bytes((0xC4, 0x01, _iip(self.invoke_id_and_priority))) + encode_get_data_result(self.result)


@dataclass(frozen=True, slots=True)
class GetResponseWithDataBlock:
    """GET-Response-With-Datablock ``C4 02``: one block of the value's encoding (raw-data) or an error.

    Concatenate the ``result`` bytes of blocks 1..n (until ``last_block``) and decode them with
    ``decode_data_result``.
    """

    last_block: bool
    block_number: int
    result: bytes | DataAccessResult
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        if not 0 <= self.block_number <= 0xFFFFFFFF:
            raise EncodeError(f"block number {self.block_number} is not an Unsigned32")
        head = bytes((0xC4, 0x02, _iip(self.invoke_id_and_priority), 1 if self.last_block else 0))
        head += self.block_number.to_bytes(4, "big")
        if isinstance(self.result, DataAccessResult):
            return head + bytes((0x01, self.result))
        return head + b"\x00" + encode_length(len(self.result)) + self.result


@dataclass(frozen=True, slots=True)
class GetResponseWithList:
    """GET-Response-With-List ``C4 03``: one Get-Data-Result per requested attribute."""

    results: tuple[Data | DataAccessResult, ...]
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        return bytes((0xC4, 0x03, _iip(self.invoke_id_and_priority))) + _list_results(self.results)


# ------------------------------------------------------------------------------------- SET / ACTION


@dataclass(frozen=True, slots=True)
class SetRequestNormal:
    """SET-Request-Normal ``C1 01``: write ``value`` to one attribute."""

    descriptor: AttributeDescriptor
    value: Data
    access: SelectiveAccess | None = None
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        return (
            bytes((0xC1, 0x01, _iip(self.invoke_id_and_priority)))
            + self.descriptor.encode()
            + encode_optional_access(self.access)
            + encode(self.value)
        )


@dataclass(frozen=True, slots=True)
class SetResponseNormal:
    """SET-Response-Normal ``C5 01``."""

    result: DataAccessResult
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY

    def encode(self) -> bytes:
        return bytes((0xC5, 0x01, _iip(self.invoke_id_and_priority), self.result))


@dataclass(frozen=True, slots=True)
class ActionRequestNormal:
    """ACTION-Request-Normal ``C3 01``: invoke a method, with optional parameters.

    ``has_parameters`` distinguishes "no parameters" from a null-data parameter; it defaults to
    whether ``parameters`` is not None.
    """

    descriptor: MethodDescriptor
    parameters: Data = None
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY
    has_parameters: bool | None = None

    def __post_init__(self) -> None:
        if self.has_parameters is None:
            object.__setattr__(self, "has_parameters", self.parameters is not None)

    def encode(self) -> bytes:
        head = bytes((0xC3, 0x01, _iip(self.invoke_id_and_priority))) + self.descriptor.encode()
        return head + (b"\x01" + encode(self.parameters) if self.has_parameters else b"\x00")


@dataclass(frozen=True, slots=True)
class ActionResponseNormal:
    """ACTION-Response-Normal ``C7 01``: the action result and optional return data (Get-Data-Result)."""

    result: ActionResult
    return_data: Data | DataAccessResult = None
    invoke_id_and_priority: int = DEFAULT_INVOKE_ID_AND_PRIORITY
    has_return_data: bool | None = None

    def __post_init__(self) -> None:
        if self.has_return_data is None:
            object.__setattr__(self, "has_return_data", self.return_data is not None)

    def encode(self) -> bytes:
        head = bytes((0xC7, 0x01, _iip(self.invoke_id_and_priority), self.result))
        return head + (b"\x01" + encode_get_data_result(self.return_data) if self.has_return_data else b"\x00")


# ---------------------------------------------------------------------------- exceptions, push, etc.


@dataclass(frozen=True, slots=True)
class ExceptionResponse:
    """Exception-Response ``D8 state-error service-error`` (+ the expected invocation counter for 6)."""

    state_error: int = ExceptionStateError.SERVICE_NOT_ALLOWED
    service_error: int = ExceptionServiceError.OPERATION_NOT_POSSIBLE
    invocation_counter: int | None = None
    """The counter the receiver expects next; present only with invocation-counter-error."""

    def encode(self) -> bytes:
        out = bytes((0xD8, self.state_error, self.service_error))
        if self.service_error == ExceptionServiceError.INVOCATION_COUNTER_ERROR:
            if self.invocation_counter is None or not 0 <= self.invocation_counter <= 0xFFFFFFFF:
                raise EncodeError("invocation-counter-error needs the expected counter (Unsigned32)")
            out += self.invocation_counter.to_bytes(4, "big")
        return out


@dataclass(frozen=True, slots=True)
class DataNotification:
    """Data-Notification ``0F`` (push): long invoke id, date-time octet-string (may be empty), body."""

    body: Data
    long_invoke_id_and_priority: int = 0
    date_time: bytes | None = None

    def encode(self) -> bytes:
        if not 0 <= self.long_invoke_id_and_priority <= 0xFFFFFFFF:
            raise EncodeError("long-invoke-id-and-priority is not an Unsigned32")
        stamp = self.date_time or b""
        return (
            b"\x0f"
            + self.long_invoke_id_and_priority.to_bytes(4, "big")
            + encode_length(len(stamp))
            + stamp
            + encode(self.body)
        )


@dataclass(frozen=True, slots=True)
class EventNotificationRequest:
    """Event-Notification-Request ``C2``: optional time, the attribute, its value."""

    descriptor: AttributeDescriptor
    value: Data
    time: bytes | None = None

    def encode(self) -> bytes:
        stamp = b"\x00" if self.time is None else b"\x01" + encode_length(len(self.time)) + self.time
        return b"\xc2" + stamp + self.descriptor.encode() + encode(self.value)


@dataclass(frozen=True, slots=True)
class CipheredApdu:
    """A ciphered APDU kept as received (``security.decipher_apdu`` opens it); ``tag`` is its first byte."""

    tag: int
    raw: bytes

    def encode(self) -> bytes:
        return self.raw


Apdu: TypeAlias = (
    AARQ
    | AARE
    | RLRQ
    | RLRE
    | GetRequestNormal
    | GetRequestNext
    | GetRequestWithList
    | GetResponseNormal
    | GetResponseWithDataBlock
    | GetResponseWithList
    | SetRequestNormal
    | SetResponseNormal
    | ActionRequestNormal
    | ActionResponseNormal
    | ExceptionResponse
    | DataNotification
    | EventNotificationRequest
    | CipheredApdu
)


# ------------------------------------------------------------------------------------------- decode


def _get_request(c: Cursor, choice: int, iip: int) -> Apdu:
    if choice == 1:
        return GetRequestNormal(c.attribute(), c.optional_access(), iip)
    if choice == 2:
        return GetRequestNext(c.u32("block number"), iip)
    count = c.count("attribute list")
    return GetRequestWithList(tuple((c.attribute(), c.optional_access()) for _ in range(count)), iip)


def _get_response(c: Cursor, choice: int, iip: int) -> Apdu:
    if choice == 1:
        return GetResponseNormal(c.get_data_result(), iip)
    if choice == 2:
        last = c.boolean("last-block")
        block = c.u32("block number")
        at = c.pos
        kind = c.u8("raw-data or data-access-result")
        if kind == 0:
            return GetResponseWithDataBlock(last, block, c.octet_string("raw-data"), iip)
        if kind == 1:
            return GetResponseWithDataBlock(last, block, c.data_access_result(), iip)
        raise DecodeError(f"DataBlock-G result choice {kind}", offset=at, expected="0 raw-data or 1 result")
    count = c.count("result list")
    return GetResponseWithList(tuple(c.get_data_result() for _ in range(count)), iip)


def _set_request(c: Cursor, _choice: int, iip: int) -> Apdu:
    descriptor = c.attribute()
    access = c.optional_access()
    return SetRequestNormal(descriptor, c.data(), access, iip)


def _set_response(c: Cursor, _choice: int, iip: int) -> Apdu:
    return SetResponseNormal(c.data_access_result(), iip)


def _action_request(c: Cursor, _choice: int, iip: int) -> Apdu:
    descriptor = c.method()
    if c.flag("method-invocation-parameters presence"):
        return ActionRequestNormal(descriptor, c.data(), iip, has_parameters=True)
    return ActionRequestNormal(descriptor, None, iip, has_parameters=False)


def _action_response(c: Cursor, _choice: int, iip: int) -> Apdu:
    result = c.action_result()
    if c.flag("return-parameters presence"):
        return ActionResponseNormal(result, c.get_data_result(), iip, has_return_data=True)
    return ActionResponseNormal(result, None, iip, has_return_data=False)


# tag -> (decoder, highest service choice supported)
_SERVICES = {
    0xC0: (_get_request, 3),
    0xC4: (_get_response, 3),
    0xC1: (_set_request, 1),
    0xC5: (_set_response, 1),
    0xC3: (_action_request, 1),
    0xC7: (_action_response, 1),
}
_ACSE: dict[int, Callable[[bytes], Apdu]] = {0x60: AARQ.decode, 0x61: AARE.decode, 0x62: RLRQ.decode, 0x63: RLRE.decode}


def _exception(c: Cursor) -> Apdu:
    state = c.u8("state-error")
    service = c.u8("service-error")
    counter = (
        c.u32("expected invocation counter") if service == ExceptionServiceError.INVOCATION_COUNTER_ERROR else None
    )
    return ExceptionResponse(state, service, counter)


def _data_notification(c: Cursor) -> Apdu:
    long_iip = c.u32("long-invoke-id-and-priority")
    stamp = c.octet_string("date-time")
    return DataNotification(c.data(), long_iip, stamp or None)


def _event_notification(c: Cursor) -> Apdu:
    stamp = c.octet_string("time") if c.flag("time presence") else None
    descriptor = c.attribute()
    return EventNotificationRequest(descriptor, c.data(), stamp)


def decode_apdu(buf: bytes | bytearray | memoryview) -> Apdu:
    """Decode one APDU filling ``buf``; DecodeError for an unknown/unsupported APDU or malformed bytes."""
    data = bytes(buf)
    if not data:
        raise DecodeError("empty APDU", offset=0, expected="an APDU tag")
    tag = data[0]
    if tag in _ACSE:
        return _ACSE[tag](data)
    if tag in CIPHERED_TAGS:
        return CipheredApdu(tag, data)
    c = Cursor(data, 1)
    if tag in _SERVICES:
        decoder, highest = _SERVICES[tag]
        choice = c.u8("service choice")
        if not 1 <= choice <= highest:
            raise DecodeError(f"service choice {choice} of 0x{tag:02X}", offset=1, expected=f"1..{highest}")
        apdu = decoder(c, choice, c.u8("invoke-id-and-priority"))
    elif tag == 0xD8:
        apdu = _exception(c)
    elif tag == 0x0F:
        apdu = _data_notification(c)
    elif tag == 0xC2:
        apdu = _event_notification(c)
    else:
        raise DecodeError(f"unsupported APDU tag 0x{tag:02X}", offset=0, expected="a supported xDLMS/ACSE tag")
    c.end("APDU")
    return apdu
