"""A-XDR ``compact-array`` (tag 19, IEC 62056-6-2 clause 4.1.5): a type description then untagged contents.

    compact-array ::= [19] SEQUENCE { contents-description TypeDescription, array-contents OCTET STRING }
    TypeDescription ::= CHOICE {
        array [1] SEQUENCE { number-of-elements Unsigned16, type-description TypeDescription },
        structure [2] SEQUENCE OF TypeDescription,
        <any simple Data tag> NULL }

The contents are the elements' encodings without their tags (variable-length values keep their
length, arrays and structures do not repeat their counts). Importing ``axdr`` registers the decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, Union

from openami.protocols.dlms import axdr
from openami.protocols.dlms.axdr import Array, Data, Structure, decode_length, encode, encode_length
from openami.protocols.dlms.errors import DecodeError, EncodeError

__all__ = [
    "ArrayType",
    "StructureType",
    "TypeDescription",
    "decode_type_description",
    "encode_compact_array",
    "encode_type_description",
]

_Decoder = Callable[[bytes, int, int], tuple[Data, int]]


@dataclass(frozen=True, slots=True)
class ArrayType:
    """Type description of a fixed-size array: ``count`` elements of ``element``."""

    count: int
    element: TypeDescription


@dataclass(frozen=True, slots=True)
class StructureType:
    """Type description of a structure: one description per member."""

    elements: tuple[TypeDescription, ...]


TypeDescription: TypeAlias = Union[int, ArrayType, StructureType]  # noqa: UP007 - recursive alias
"""A simple Data tag (``int``), an ``ArrayType`` or a ``StructureType``."""


def decode_type_description(buf: bytes, offset: int, depth: int = 0) -> tuple[TypeDescription, int]:
    """Read a TypeDescription at ``offset``; returns (description, next offset). DecodeError if invalid."""
    if depth >= axdr.MAX_DEPTH:
        raise DecodeError("type description nested too deep", offset=offset, expected="shallower nesting")
    if offset >= len(buf):
        raise DecodeError("truncated type description", offset=offset, expected="a type tag")
    tag = buf[offset]
    offset += 1
    if tag == 1:
        if offset + 2 > len(buf):
            raise DecodeError("truncated array type description", offset=offset, expected="2-byte element count")
        count = int.from_bytes(buf[offset : offset + 2], "big")
        element, offset = decode_type_description(buf, offset + 2, depth + 1)
        return ArrayType(count, element), offset
    if tag == 2:
        count, offset = decode_length(buf, offset)
        if count > len(buf) - offset:
            raise DecodeError("structure type description overruns", offset=offset, expected=f"{count} types")
        members: list[TypeDescription] = []
        for _ in range(count):
            member, offset = decode_type_description(buf, offset, depth + 1)
            members.append(member)
        return StructureType(tuple(members)), offset
    if not axdr.is_simple_tag(tag):
        raise DecodeError(f"tag 0x{tag:02X} in a type description", offset=offset - 1, expected="a Data type tag")
    return tag, offset


def _compile(description: TypeDescription) -> _Decoder:
    """Turn a description into a decoder of one untagged element (scalars reuse axdr's table)."""
    if isinstance(description, int):
        return axdr._DECODERS[description]
    if isinstance(description, ArrayType):
        element = _compile(description.element)
        count = description.count

        def decode_array(buf: bytes, o: int, depth: int) -> tuple[Data, int]:
            items = Array()
            for _ in range(count):
                value, o = element(buf, o, depth)
                items.append(value)
            return items, o

        return decode_array
    members = [_compile(member) for member in description.elements]

    def decode_structure(buf: bytes, o: int, depth: int) -> tuple[Data, int]:
        values: list[Data] = []
        for member in members:
            value, o = member(buf, o, depth)
            values.append(value)
        return Structure(values), o

    return decode_structure


def _decode_compact_array(buf: bytes, o: int, depth: int) -> tuple[Data, int]:
    description, o = decode_type_description(buf, o, depth)
    element = _compile(description)
    size, start = decode_length(buf, o)
    end = start + size
    if end > len(buf):
        raise DecodeError(f"compact-array contents of {size} bytes overrun", offset=o, expected=f"{size} bytes")
    body = buf[:end]  # an element must not read past the contents: bound the buffer, offsets unchanged
    items = Array()
    o = start
    try:
        while o < end:
            value, after = element(body, o, depth + 1)
            if after == o:
                raise DecodeError("compact-array element of zero size", offset=o, expected="non-empty elements")
            items.append(value)
            o = after
    except axdr._TRUNCATED:
        raise DecodeError(
            "element overruns the compact-array contents", offset=end, expected="whole elements"
        ) from None
    return items, end


axdr._DECODERS[19] = _decode_compact_array


def encode_type_description(description: TypeDescription) -> bytes:
    """Encode a TypeDescription (EncodeError for an unknown tag)."""
    if isinstance(description, ArrayType):
        if not 0 <= description.count <= 0xFFFF:
            raise EncodeError(f"compact-array element count {description.count} is not 0-65535")
        return b"\x01" + description.count.to_bytes(2, "big") + encode_type_description(description.element)
    if isinstance(description, StructureType):
        parts = [encode_type_description(member) for member in description.elements]
        return b"\x02" + encode_length(len(parts)) + b"".join(parts)
    if not axdr.is_simple_tag(description):
        raise EncodeError(f"{description} is not a simple Data type tag")
    return bytes((description,))


def _untagged(value: Data, description: TypeDescription, out: bytearray) -> None:
    if isinstance(description, ArrayType):
        if not isinstance(value, list) or len(value) != description.count:
            raise EncodeError(f"compact-array element needs a list of {description.count}")
        for item in value:
            _untagged(item, description.element, out)
    elif isinstance(description, StructureType):
        if not isinstance(value, tuple) or len(value) != len(description.elements):
            raise EncodeError(f"compact-array element needs a tuple of {len(description.elements)}")
        for item, member in zip(value, description.elements, strict=True):
            _untagged(item, member, out)
    else:
        tagged = encode(value)
        if tagged[0] != description:
            raise EncodeError(f"compact-array value of tag {tagged[0]} where the description says {description}")
        out += tagged[1:]


def encode_compact_array(values: Sequence[Data], description: TypeDescription) -> bytes:
    """Encode ``values`` (each matching ``description``) as a tagged compact-array."""
    body = bytearray()
    for value in values:
        _untagged(value, description, body)
    return b"\x13" + encode_type_description(description) + encode_length(len(body)) + bytes(body)
