"""Building blocks of the xDLMS LN service APDUs (IEC 62056-5-3 clause 9.3): results, descriptors, reader.

Cosem-Attribute-Descriptor ::= SEQUENCE { class-id Unsigned16, instance-id OCTET STRING (SIZE(6)),
                                          attribute-id Integer8 }
Cosem-Method-Descriptor    ::= SEQUENCE { class-id, instance-id, method-id Integer8 }
Selective-Access-Descriptor ::= SEQUENCE { access-selector Unsigned8, access-parameters Data }
Get-Data-Result ::= CHOICE { data [0] Data, data-access-result [1] IMPLICIT Data-Access-Result }
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Self

from openami.protocols.dlms.axdr import Data, decode, decode_all, decode_length, encode
from openami.protocols.dlms.errors import DecodeError, EncodeError
from openami.protocols.dlms.obis import Obis

__all__ = [
    "ActionResult",
    "AttributeDescriptor",
    "Cursor",
    "DataAccessResult",
    "ExceptionServiceError",
    "ExceptionStateError",
    "MethodDescriptor",
    "SelectiveAccess",
    "decode_data_result",
    "encode_get_data_result",
    "encode_optional_access",
]


class _OpenEnum(IntEnum):
    """An IntEnum that keeps unknown one-byte codes as pseudo-members (``UNKNOWN_<n>``)."""

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if isinstance(value, int) and 0 <= value <= 0xFF:
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            return member
        return None


class DataAccessResult(_OpenEnum):
    """Data-Access-Result (IEC 62056-5-3): why a GET/SET of one attribute failed (0 = success)."""

    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    LONG_GET_ABORTED = 15
    NO_LONG_GET_IN_PROGRESS = 16
    LONG_SET_ABORTED = 17
    NO_LONG_SET_IN_PROGRESS = 18
    DATA_BLOCK_NUMBER_INVALID = 19
    OTHER_REASON = 250


class ActionResult(_OpenEnum):
    """Action-Result (IEC 62056-5-3): the outcome of an ACTION (0 = success)."""

    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    LONG_ACTION_ABORTED = 15
    NO_LONG_ACTION_IN_PROGRESS = 16
    OTHER_REASON = 250


class ExceptionStateError(_OpenEnum):
    """Exception-Response state-error."""

    SERVICE_NOT_ALLOWED = 1
    SERVICE_UNKNOWN = 2


class ExceptionServiceError(_OpenEnum):
    """Exception-Response service-error (6 carries the expected invocation counter)."""

    OPERATION_NOT_POSSIBLE = 1
    SERVICE_NOT_SUPPORTED = 2
    OTHER_REASON = 3
    PDU_TOO_LONG = 4
    DECIPHERING_ERROR = 5
    INVOCATION_COUNTER_ERROR = 6


_DESCRIPTOR = struct.Struct(">H6sb")


@dataclass(frozen=True, slots=True)
class AttributeDescriptor:
    """Cosem-Attribute-Descriptor: class id, logical name, attribute index (9 bytes)."""

    class_id: int
    instance_id: Obis
    attribute_id: int

    def encode(self) -> bytes:
        try:
            return _DESCRIPTOR.pack(self.class_id, self.instance_id.to_bytes(), self.attribute_id)
        except struct.error:
            raise EncodeError(f"{self} does not fit Unsigned16/Integer8") from None


@dataclass(frozen=True, slots=True)
class MethodDescriptor:
    """Cosem-Method-Descriptor: class id, logical name, method index (9 bytes)."""

    class_id: int
    instance_id: Obis
    method_id: int

    def encode(self) -> bytes:
        try:
            return _DESCRIPTOR.pack(self.class_id, self.instance_id.to_bytes(), self.method_id)
        except struct.error:
            raise EncodeError(f"{self} does not fit Unsigned16/Integer8") from None


@dataclass(frozen=True, slots=True)
class SelectiveAccess:
    """Selective-Access-Descriptor: selector (1 by range, 2 by entry for profiles) and its parameters."""

    selector: int
    parameters: Data

    def encode(self) -> bytes:
        if not 0 <= self.selector <= 0xFF:
            raise EncodeError(f"access selector {self.selector} is not an Unsigned8")
        return bytes((self.selector,)) + encode(self.parameters)


def encode_optional_access(access: SelectiveAccess | None) -> bytes:
    """The OPTIONAL access-selection: ``00`` or ``01`` followed by the descriptor."""
    return b"\x00" if access is None else b"\x01" + access.encode()


def encode_get_data_result(result: Data | DataAccessResult) -> bytes:
    """Get-Data-Result: ``00 <Data>`` or ``01 <Data-Access-Result>``."""
    if isinstance(result, DataAccessResult):
        return bytes((0x01, result))
    return b"\x00" + encode(result)


def decode_data_result(buf: bytes | bytearray | memoryview) -> Data:
    """Decode the reassembled raw-data of a GET with block transfer (the value's A-XDR encoding)."""
    return decode_all(buf)


class Cursor:
    """Bounds-checked sequential reads over one APDU; every failure is a DecodeError naming the field."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise DecodeError(f"truncated {what}", offset=self.pos, expected=f"{n} bytes of {what}")
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def u8(self, what: str) -> int:
        if self.pos >= len(self.buf):
            raise DecodeError(f"truncated {what}", offset=self.pos, expected=what)
        self.pos += 1
        return self.buf[self.pos - 1]

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def flag(self, what: str) -> bool:
        at = self.pos
        value = self.u8(what)
        if value > 1:
            raise DecodeError(f"{what} byte {value}", offset=at, expected="00 or 01")
        return value == 1

    def boolean(self, what: str) -> bool:
        return self.u8(what) != 0

    def count(self, what: str) -> int:
        at = self.pos
        n, self.pos = decode_length(self.buf, self.pos)
        if n > len(self.buf) - self.pos:
            raise DecodeError(f"{what} of {n} entries overruns the APDU", offset=at, expected="fewer entries")
        return n

    def octet_string(self, what: str) -> bytes:
        n, self.pos = decode_length(self.buf, self.pos)
        return self.take(n, what)

    def data(self) -> Data:
        value, self.pos = decode(self.buf, self.pos)
        return value

    def _descriptor(self, what: str) -> tuple[int, Obis, int]:
        class_id, logical_name, index = _DESCRIPTOR.unpack(self.take(_DESCRIPTOR.size, what))
        return class_id, Obis.from_bytes(logical_name), index

    def attribute(self) -> AttributeDescriptor:
        return AttributeDescriptor(*self._descriptor("attribute descriptor"))

    def method(self) -> MethodDescriptor:
        return MethodDescriptor(*self._descriptor("method descriptor"))

    def optional_access(self) -> SelectiveAccess | None:
        if not self.flag("access-selection presence"):
            return None
        selector = self.u8("access selector")
        return SelectiveAccess(selector, self.data())

    def data_access_result(self) -> DataAccessResult:
        return DataAccessResult(self.u8("data-access-result"))

    def action_result(self) -> ActionResult:
        return ActionResult(self.u8("action-result"))

    def get_data_result(self) -> Data | DataAccessResult:
        at = self.pos
        kind = self.u8("Get-Data-Result choice")
        if kind == 0:
            return self.data()
        if kind == 1:
            return self.data_access_result()
        raise DecodeError(f"Get-Data-Result choice {kind}", offset=at, expected="0 data or 1 data-access-result")

    def end(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise DecodeError(f"{len(self.buf) - self.pos} bytes after the {what}", offset=self.pos, expected="end")
