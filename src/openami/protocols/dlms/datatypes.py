"""Python types for A-XDR ``Data`` values (IEC 62056-6-2 clause 4.1.5); the codec is in ``axdr``.

Each integer width has its own ``int`` subclass that checks its range when it is built (EncodeError
otherwise), so a value always knows the tag it encodes with and ``decode(encode(v))`` keeps its type.
"""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Self, SupportsFloat, SupportsIndex, TypeAlias, Union

from openami.protocols.dlms.cosem_time import CosemDate, CosemDateTime, CosemTime
from openami.protocols.dlms.errors import EncodeError

__all__ = [
    "Array",
    "BitString",
    "Data",
    "DataTag",
    "DoubleLong",
    "DoubleLongUnsigned",
    "Enum",
    "FixedInt",
    "Float32",
    "Float64",
    "Integer",
    "Long",
    "Long64",
    "Long64Unsigned",
    "LongUnsigned",
    "Structure",
    "Unsigned",
    "Utf8String",
    "VisibleString",
]


class DataTag(IntEnum):
    """The ``Data`` CHOICE tags (IEC 62056-6-2, clause 4.1.5)."""

    NULL_DATA = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOLEAN = 3
    BIT_STRING = 4
    DOUBLE_LONG = 5
    DOUBLE_LONG_UNSIGNED = 6
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    INTEGER = 15
    LONG = 16
    UNSIGNED = 17
    LONG_UNSIGNED = 18
    COMPACT_ARRAY = 19
    LONG64 = 20
    LONG64_UNSIGNED = 21
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATE_TIME = 25
    DATE = 26
    TIME = 27


Data: TypeAlias = Union[
    bool,
    int,
    float,
    str,
    bytes,
    "BitString",
    list["Data"],
    tuple["Data", ...],
    CosemDateTime,
    CosemDate,
    CosemTime,
    None,
]
"""Any Python value that encodes as A-XDR ``Data``."""


class FixedInt(int):
    """An integer of one A-XDR width; the range is checked when the value is built."""

    __slots__ = ()
    tag: ClassVar[int]
    codec: ClassVar[struct.Struct]
    min_value: ClassVar[int]
    max_value: ClassVar[int]

    def __init_subclass__(cls, *, tag: int | None = None, fmt: str | None = None, **kwargs: Any) -> None:
        """Width subclasses name their tag and struct format; further subclasses inherit them."""
        super().__init_subclass__(**kwargs)
        if tag is None or fmt is None:
            return
        cls.tag = tag
        cls.codec = struct.Struct(fmt)
        bits = cls.codec.size * 8
        if fmt[-1].islower():  # struct's lower-case formats are the signed ones
            cls.min_value, cls.max_value = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        else:
            cls.min_value, cls.max_value = 0, (1 << bits) - 1

    def __new__(cls, value: SupportsIndex = 0) -> Self:
        try:
            number = operator.index(value)
        except TypeError:
            raise EncodeError(f"{cls.__name__} needs an integer, not {type(value).__name__}") from None
        if not cls.min_value <= number <= cls.max_value:
            raise EncodeError(f"{cls.__name__} {number} is outside {cls.min_value}..{cls.max_value}")
        return super().__new__(cls, number)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({int(self)})"


class Integer(FixedInt, tag=15, fmt=">b"):
    """A-XDR ``integer`` (tag 15): int8."""

    __slots__ = ()


class Long(FixedInt, tag=16, fmt=">h"):
    """A-XDR ``long`` (tag 16): int16."""

    __slots__ = ()


class Unsigned(FixedInt, tag=17, fmt=">B"):
    """A-XDR ``unsigned`` (tag 17): uint8."""

    __slots__ = ()


class LongUnsigned(FixedInt, tag=18, fmt=">H"):
    """A-XDR ``long-unsigned`` (tag 18): uint16."""

    __slots__ = ()


class DoubleLong(FixedInt, tag=5, fmt=">i"):
    """A-XDR ``double-long`` (tag 5): int32."""

    __slots__ = ()


class DoubleLongUnsigned(FixedInt, tag=6, fmt=">I"):
    """A-XDR ``double-long-unsigned`` (tag 6): uint32."""

    __slots__ = ()


class Long64(FixedInt, tag=20, fmt=">q"):
    """A-XDR ``long64`` (tag 20): int64."""

    __slots__ = ()


class Long64Unsigned(FixedInt, tag=21, fmt=">Q"):
    """A-XDR ``long64-unsigned`` (tag 21): uint64."""

    __slots__ = ()


class Enum(FixedInt, tag=22, fmt=">B"):
    """A-XDR ``enum`` (tag 22): uint8."""

    __slots__ = ()


_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


class Float32(float):
    """A-XDR ``float32`` (tag 23); rounded to single precision when built, so it round-trips."""

    __slots__ = ()

    def __new__(cls, value: SupportsFloat | SupportsIndex = 0.0) -> Self:
        try:
            number = _F32.unpack(_F32.pack(float(value)))[0]
        except (TypeError, ValueError, OverflowError, struct.error):
            raise EncodeError(f"Float32 cannot hold {value!r}") from None
        return super().__new__(cls, number)

    def __repr__(self) -> str:
        return f"Float32({float(self)!r})"


class Float64(float):
    """A-XDR ``float64`` (tag 24); a plain ``float`` also encodes as float64."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Float64({float(self)!r})"


class VisibleString(str):
    """A-XDR ``visible-string`` (tag 10), ASCII only; a plain ``str`` encodes the same way."""

    __slots__ = ()

    def __new__(cls, value: str = "") -> Self:
        if not value.isascii():
            raise EncodeError("visible-string must be ASCII")
        return super().__new__(cls, value)


class Utf8String(str):
    """A-XDR ``utf8-string`` (tag 12)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Utf8String({str(self)!r})"


class Array(list[Data]):
    """A-XDR ``array`` (tag 1); a plain ``list`` also encodes as an array."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Array({list.__repr__(self)})"


class Structure(tuple[Data, ...]):
    """A-XDR ``structure`` (tag 2); a plain ``tuple`` also encodes as a structure."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Structure({tuple.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class BitString:
    """A-XDR ``bit-string`` (tag 4): ``bits`` is a string of '0'/'1', first bit = MSB of byte 0."""

    bits: str

    def __post_init__(self) -> None:
        if not isinstance(self.bits, str) or self.bits.strip("01"):
            raise EncodeError("BitString bits must be a string of '0' and '1'")

    def __len__(self) -> int:
        return len(self.bits)

    def to_bytes(self) -> bytes:
        """The bits packed MSB first, the last byte padded with zero bits."""
        nbytes = (len(self.bits) + 7) // 8
        if not nbytes:
            return b""
        return int(self.bits.ljust(nbytes * 8, "0"), 2).to_bytes(nbytes, "big")

    @classmethod
    def from_bytes(cls, data: bytes, nbits: int) -> Self:
        """The first ``nbits`` bits of ``data`` (MSB first)."""
        if not data:
            return cls("")
        return cls(format(int.from_bytes(data, "big"), f"0{len(data) * 8}b")[:nbits])
