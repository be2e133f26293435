"""A-XDR encoding of COSEM ``Data`` (IEC 62056-6-2 clause 4.1.5, IEC 62056-5-3 clause 9.5, IEC 61334-6).

Python values map one-to-one onto the ``Data`` CHOICE so that ``decode(encode(v)) == v`` with the
type preserved: each integer width has its own ``int`` subclass that checks its range when it is
built, ``Array``/``Structure`` subclass ``list``/``tuple``, ``bytes`` is an octet-string and ``str``
a visible-string. A plain ``int`` is refused by ``encode`` because A-XDR needs a width.

``decode`` is on the head-end's hot path (load profiles of hundreds of values, thousands a second):
it dispatches on the tag through a 256-entry table, reads with ``struct`` straight from the buffer
and builds nothing but the result. Malformed input only ever raises ``DecodeError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from openami.protocols.dlms.cosem_time import CosemDate, CosemDateTime, CosemTime
from openami.protocols.dlms.datatypes import (
    Array,
    BitString,
    Data,
    DataTag,
    DoubleLong,
    DoubleLongUnsigned,
    Enum,
    FixedInt,
    Float32,
    Float64,
    Integer,
    Long,
    Long64,
    Long64Unsigned,
    LongUnsigned,
    Structure,
    Unsigned,
    Utf8String,
    VisibleString,
)
from openami.protocols.dlms.errors import DecodeError, EncodeError

__all__ = [
    "MAX_DEPTH",
    "Array",
    "BitString",
    "CosemDate",
    "CosemDateTime",
    "CosemTime",
    "Data",
    "DataTag",
    "DoubleLong",
    "DoubleLongUnsigned",
    "Enum",
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
    "decode",
    "decode_all",
    "decode_length",
    "encode",
    "encode_length",
    "is_simple_tag",
]

MAX_DEPTH = 32
"""Deepest nesting of arrays/structures accepted (decoding) or produced (encoding)."""


# ---------------------------------------------------------------------------------------------
# Lengths


def encode_length(n: int) -> bytes:
    """A-XDR/BER length: one byte below 128, else ``0x80 | k`` followed by k big-endian bytes."""
    if n < 0:
        raise EncodeError(f"negative length {n}")
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(body) > 4:
        raise EncodeError(f"length {n} does not fit 4 bytes")
    return bytes((0x80 | len(body),)) + body


def decode_length(buf: bytes | memoryview, offset: int) -> tuple[int, int]:
    """Read an A-XDR length at ``offset``; returns (length, next offset). DecodeError if truncated."""
    if not 0 <= offset < len(buf):
        raise DecodeError("missing length", offset=offset, expected="a length byte")
    first = buf[offset]
    if first < 0x80:
        return first, offset + 1
    size = first & 0x7F
    if not 1 <= size <= 4:
        raise DecodeError(f"length form 0x{first:02X}", offset=offset, expected="0x81..0x84 long form")
    end = offset + 1 + size
    if end > len(buf):
        raise DecodeError("truncated length", offset=offset, expected=f"{size} length bytes")
    return int.from_bytes(buf[offset + 1 : end], "big"), end


# ---------------------------------------------------------------------------------------------
# Encoding

_Encoder = Callable[[Any, bytearray, int], None]


def _enc_null(_value: None, out: bytearray, _depth: int) -> None:
    out.append(0)


def _enc_bool(value: bool, out: bytearray, _depth: int) -> None:
    out += b"\x03\x01" if value else b"\x03\x00"


def _enc_fixed_int(value: FixedInt, out: bytearray, _depth: int) -> None:
    out.append(value.tag)
    out += value.codec.pack(value)


def _enc_float32(value: float, out: bytearray, _depth: int) -> None:
    out.append(23)
    out += _F32.pack(value)


def _enc_float64(value: float, out: bytearray, _depth: int) -> None:
    out.append(24)
    out += _F64.pack(value)


def _enc_octets(value: bytes, out: bytearray, _depth: int) -> None:
    out.append(9)
    out += encode_length(len(value))
    out += value


def _enc_visible(value: str, out: bytearray, _depth: int) -> None:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise EncodeError("visible-string must be ASCII (use Utf8String for other text)") from None
    out.append(10)
    out += encode_length(len(raw))
    out += raw


def _enc_utf8(value: str, out: bytearray, _depth: int) -> None:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError("utf8-string holds a lone surrogate") from None
    out.append(12)
    out += encode_length(len(raw))
    out += raw


def _enc_bits(value: BitString, out: bytearray, _depth: int) -> None:
    out.append(4)
    out += encode_length(len(value.bits))
    out += value.to_bytes()


def _enc_array(value: list[Data], out: bytearray, depth: int) -> None:
    _enc_sequence(1, value, out, depth)


def _enc_structure(value: tuple[Data, ...], out: bytearray, depth: int) -> None:
    _enc_sequence(2, value, out, depth)


def _enc_sequence(tag: int, items: list[Data] | tuple[Data, ...], out: bytearray, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise EncodeError(f"data nested deeper than {MAX_DEPTH} levels")
    out.append(tag)
    out += encode_length(len(items))
    for item in items:
        encoder = _ENCODERS.get(type(item)) or _encoder_for(item)
        encoder(item, out, depth + 1)


def _enc_date_time(value: CosemDateTime, out: bytearray, _depth: int) -> None:
    out.append(25)
    out += value.to_bytes()


def _enc_date(value: CosemDate, out: bytearray, _depth: int) -> None:
    out.append(26)
    out += value.to_bytes()


def _enc_time(value: CosemTime, out: bytearray, _depth: int) -> None:
    out.append(27)
    out += value.to_bytes()


_ENCODERS: dict[type, _Encoder] = {
    type(None): _enc_null,
    bool: _enc_bool,
    float: _enc_float64,
    Float32: _enc_float32,
    Float64: _enc_float64,
    bytes: _enc_octets,
    bytearray: _enc_octets,
    str: _enc_visible,
    VisibleString: _enc_visible,
    Utf8String: _enc_utf8,
    BitString: _enc_bits,
    list: _enc_array,
    Array: _enc_array,
    tuple: _enc_structure,
    Structure: _enc_structure,
    CosemDateTime: _enc_date_time,
    CosemDate: _enc_date,
    CosemTime: _enc_time,
}
for _cls in (Integer, Long, Unsigned, LongUnsigned, DoubleLong, DoubleLongUnsigned, Long64, Long64Unsigned, Enum):
    _ENCODERS[_cls] = _enc_fixed_int


def _encoder_for(value: object) -> _Encoder:
    """Find the encoder of a subclass (a NamedTuple, a user ``Unsigned`` subclass...) by its MRO."""
    for klass in type(value).__mro__:
        if klass in (FixedInt, int):
            break
        encoder = _ENCODERS.get(klass)
        if encoder is not None:
            return encoder
    if isinstance(value, FixedInt):
        return _enc_fixed_int
    if isinstance(value, int):
        raise EncodeError(
            f"plain {type(value).__name__} {value!r} has no A-XDR width: wrap it in Integer, Long, Unsigned, "
            "LongUnsigned, DoubleLong, DoubleLongUnsigned, Long64, Long64Unsigned or Enum"
        )
    raise EncodeError(f"{type(value).__name__} has no A-XDR encoding")


def encode(value: Data) -> bytes:
    """Encode one value as tagged A-XDR ``Data``; raises EncodeError for a value with no encoding."""
    out = bytearray()
    encoder = _ENCODERS.get(type(value)) or _encoder_for(value)
    encoder(value, out, 0)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Decoding: every function takes (buffer, offset just after the tag, depth)

_Decoder = Callable[[bytes, int, int], tuple[Data, int]]
_new_int = int.__new__
_new_float = float.__new__
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_U32 = DoubleLongUnsigned.codec.unpack_from
_I32 = DoubleLong.codec.unpack_from

# Fixed-size reads index the buffer without checking its length first: running off the end raises
# IndexError or struct.error, which the entry points (``decode``, ``decode_all``) turn into a
# DecodeError. Slices never raise, so every length-prefixed read checks its end explicitly.
_TRUNCATED = (IndexError, struct.error)


def _dec_unknown(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    raise DecodeError(f"unknown data tag 0x{buf[o - 1]:02X}", offset=o - 1, expected="an A-XDR Data tag")


def _dec_null(_buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    return None, o


def _dec_bool(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    return buf[o] != 0, o + 1


def _fixed_int_decoder(cls: type[FixedInt]) -> _Decoder:
    unpack_from = cls.codec.unpack_from
    size = cls.codec.size

    def decode_fixed(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
        return _new_int(cls, unpack_from(buf, o)[0]), o + size

    return decode_fixed


# One-byte values come from prebuilt tables: building an int subclass costs more than a lookup.
_UNSIGNED = tuple(_new_int(Unsigned, n) for n in range(256))
_ENUM = tuple(_new_int(Enum, n) for n in range(256))
_INTEGER = tuple(_new_int(Integer, n - 256 if n > 127 else n) for n in range(256))


def _dec_unsigned(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    return _UNSIGNED[buf[o]], o + 1


def _dec_enum(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    return _ENUM[buf[o]], o + 1


def _dec_integer(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    return _INTEGER[buf[o]], o + 1


def _dec_float32(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    return _new_float(Float32, _F32.unpack_from(buf, o)[0]), o + 4


def _dec_float64(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    return _new_float(Float64, _F64.unpack_from(buf, o)[0]), o + 8


def _counted(buf: bytes, o: int, what: str) -> tuple[int, int]:
    """Read a length and check that many bytes follow; returns (start, end)."""
    n = buf[o]
    if n < 0x80:
        start = o + 1
    else:
        n, start = decode_length(buf, o)
    end = start + n
    if end > len(buf):
        raise DecodeError(f"{what} of {n} bytes overruns the buffer", offset=o, expected=f"{n} bytes of {what}")
    return start, end


def _dec_octets(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    n = buf[o]
    if n < 0x80:
        o += 1
    else:
        n, o = decode_length(buf, o)
    end = o + n
    if end > len(buf):
        raise DecodeError(f"octet-string of {n} bytes overruns the buffer", offset=o, expected=f"{n} bytes")
    return buf[o:end], end


def _dec_visible(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    start, end = _counted(buf, o, "visible-string")
    try:
        return buf[start:end].decode("ascii"), end
    except UnicodeDecodeError as exc:
        raise DecodeError("visible-string is not ASCII", offset=start + exc.start, expected="ASCII") from None


def _dec_utf8(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    start, end = _counted(buf, o, "utf8-string")
    try:
        return str.__new__(Utf8String, buf[start:end].decode("utf-8")), end
    except UnicodeDecodeError as exc:
        raise DecodeError("utf8-string is not UTF-8", offset=start + exc.start, expected="UTF-8") from None


def _dec_bits(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
    nbits, start = decode_length(buf, o)
    end = start + (nbits + 7) // 8
    if end > len(buf):
        raise DecodeError(f"bit-string of {nbits} bits overruns the buffer", offset=o, expected="the bit bytes")
    return BitString.from_bytes(buf[start:end], nbits), end


def _element_count(buf: bytes, o: int, depth: int, what: str) -> tuple[int, int]:
    """Read an array/structure element count; refuse one that cannot fit or nests too deep."""
    if depth >= MAX_DEPTH:
        raise DecodeError(f"{what} nested deeper than {MAX_DEPTH}", offset=o, expected="shallower data")
    count = buf[o]
    if count < 0x80:
        o += 1
    else:
        count, o = decode_length(buf, o)
    if count > len(buf) - o:
        raise DecodeError(f"{what} of {count} elements overruns the buffer", offset=o, expected="one tag per element")
    return count, o


def _dec_array(buf: bytes, o: int, depth: int) -> tuple[Data, int]:
    count = buf[o]
    if count < 0x80 and count < len(buf) - o and depth < MAX_DEPTH:
        o += 1
    else:
        count, o = _element_count(buf, o, depth, "array")
    items = Array()
    append = items.append
    table = _DECODERS
    depth += 1
    for _ in range(count):
        value, o = table[buf[o]](buf, o + 1, depth)
        append(value)
    return items, o


def _dec_structure(buf: bytes, o: int, depth: int) -> tuple[Data, int]:
    count = buf[o]
    if count < 0x80 and count < len(buf) - o and depth < MAX_DEPTH:
        o += 1
    else:
        count, o = _element_count(buf, o, depth, "structure")
    items: list[Data] = []
    append = items.append
    table = _DECODERS
    depth += 1
    size = len(buf)
    # Profile rows are structures of a few scalars: decode the commonest ones inline (no call).
    for _ in range(count):
        tag = buf[o]
        if tag == 6:
            append(_new_int(DoubleLongUnsigned, _U32(buf, o + 1)[0]))
            o += 5
        elif tag == 9 and buf[o + 1] < 0x80:
            end = o + 2 + buf[o + 1]
            if end > size:
                raise DecodeError("octet-string overruns the buffer", offset=o + 1, expected="its bytes")
            append(buf[o + 2 : end])
            o = end
        elif tag == 17:
            append(_UNSIGNED[buf[o + 1]])
            o += 2
        elif tag == 5:
            append(_new_int(DoubleLong, _I32(buf, o + 1)[0]))
            o += 5
        else:
            value, o = table[tag](buf, o + 1, depth)
            append(value)
    return Structure(items), o


def _fixed_decoder(size: int, build: Callable[[bytes], Data], what: str) -> _Decoder:
    def decode_fixed(buf: bytes, o: int, _depth: int) -> tuple[Data, int]:
        end = o + size
        if end > len(buf):
            raise DecodeError(f"truncated {what}", offset=o, expected=what)
        return build(buf[o:end]), end

    return decode_fixed


_DECODERS: list[_Decoder] = [_dec_unknown] * 256
_DECODERS[0] = _dec_null
_DECODERS[1] = _dec_array
_DECODERS[2] = _dec_structure
_DECODERS[3] = _dec_bool
_DECODERS[4] = _dec_bits
_DECODERS[9] = _dec_octets
_DECODERS[10] = _dec_visible
_DECODERS[12] = _dec_utf8
_DECODERS[23] = _dec_float32
_DECODERS[24] = _dec_float64
_DECODERS[25] = _fixed_decoder(12, CosemDateTime.from_bytes, "12-byte date-time")
_DECODERS[26] = _fixed_decoder(5, CosemDate.from_bytes, "5-byte date")
_DECODERS[27] = _fixed_decoder(4, CosemTime.from_bytes, "4-byte time")
for _cls in (Integer, Long, LongUnsigned, DoubleLong, DoubleLongUnsigned, Long64, Long64Unsigned):
    _DECODERS[_cls.tag] = _fixed_int_decoder(_cls)
_DECODERS[15] = _dec_integer
_DECODERS[17] = _dec_unsigned
_DECODERS[22] = _dec_enum


def is_simple_tag(tag: int) -> bool:
    """Whether ``tag`` is a known Data tag other than array, structure and compact-array."""
    return 0 <= tag <= 255 and tag not in (1, 2, 19) and _DECODERS[tag] is not _dec_unknown


def decode(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Data, int]:
    """Decode one tagged value at ``offset``; returns (value, offset after it).

    Raises DecodeError (and nothing else) on an unknown tag, a truncated value or too deep nesting.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    if not 0 <= offset < len(buf):
        raise DecodeError("no data", offset=offset, expected="an A-XDR Data tag")
    try:
        return _DECODERS[buf[offset]](buf, offset + 1, 0)
    except _TRUNCATED:
        raise DecodeError("data runs past the end of the buffer", offset=len(buf), expected="more bytes") from None


def decode_all(buf: bytes | bytearray | memoryview) -> Data:
    """Decode exactly one value filling ``buf``; DecodeError on trailing bytes."""
    if type(buf) is not bytes:
        buf = bytes(buf)
    value, end = decode(buf, 0)
    if end != len(buf):
        raise DecodeError(f"{len(buf) - end} trailing bytes after the data", offset=end, expected="end of data")
    return value


# The compact-array decoder (tag 19) lives in its own module and registers itself in _DECODERS.
from openami.protocols.dlms import compact as _compact  # noqa: E402, F401
