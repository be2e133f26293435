"""The few BER (ITU-T X.690) pieces the ACSE APDUs need: definite-length TLVs with one-byte tags.

IEC 62056-5-3 clause 8 encodes AARQ/AARE/RLRQ/RLRE with BER; every tag they use fits one byte.
``BerReader`` walks a TLV sequence inside bounds and raises DecodeError for anything malformed.
"""

from __future__ import annotations

from openami.protocols.dlms.errors import DecodeError, EncodeError

__all__ = ["BerReader", "decode_integer", "encode_integer", "encode_length", "tlv"]


def encode_length(n: int) -> bytes:
    """BER definite length: short form below 128, else ``0x80 | k`` and k bytes."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(body) > 4:
        raise EncodeError(f"BER length {n} does not fit 4 bytes")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One TLV with a one-byte tag."""
    return bytes((tag,)) + encode_length(len(content)) + content


def encode_integer(value: int) -> bytes:
    """The content octets of a BER INTEGER (minimal two's complement)."""
    size = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return value.to_bytes(size, "big", signed=True)


def decode_integer(content: bytes, offset: int) -> int:
    """A BER INTEGER's content octets (1-4 bytes); ``offset`` is used for the error only."""
    if not 1 <= len(content) <= 4:
        raise DecodeError(f"INTEGER of {len(content)} bytes", offset=offset, expected="1-4 content bytes")
    return int.from_bytes(content, "big", signed=True)


class BerReader:
    """Read TLVs from ``buf[start:end]``; offsets reported in errors are positions in ``buf``."""

    def __init__(self, buf: bytes, start: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = start
        self.end = len(buf) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def read(self) -> tuple[int, int, int]:
        """The next TLV as (tag, content start, content end); moves past it."""
        buf, pos, end = self.buf, self.pos, self.end
        if pos + 2 > end:
            raise DecodeError("truncated TLV", offset=pos, expected="a tag and a length")
        tag = buf[pos]
        if tag & 0x1F == 0x1F:
            raise DecodeError(f"multi-byte tag 0x{tag:02X}", offset=pos, expected="a one-byte tag")
        length = buf[pos + 1]
        start = pos + 2
        if length >= 0x80:
            size = length & 0x7F
            if not 1 <= size <= 4 or start + size > end:
                raise DecodeError(f"length form 0x{length:02X}", offset=pos + 1, expected="a definite length")
            length = int.from_bytes(buf[start : start + size], "big")
            start += size
        stop = start + length
        if stop > end:
            raise DecodeError(f"TLV of {length} bytes overruns its container", offset=pos, expected=f"{length} bytes")
        self.pos = stop
        return tag, start, stop

    def expect(self, tag: int, what: str) -> tuple[int, int]:
        """The next TLV, which must have ``tag``; returns (content start, content end)."""
        at = self.pos
        got, start, stop = self.read()
        if got != tag:
            raise DecodeError(f"tag 0x{got:02X} where {what} belongs", offset=at, expected=f"tag 0x{tag:02X} ({what})")
        return start, stop

    def inner(self, start: int, stop: int) -> BerReader:
        """A reader for the contents of a constructed TLV."""
        return BerReader(self.buf, start, stop)
