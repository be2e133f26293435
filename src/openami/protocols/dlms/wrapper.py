"""IEC 62056-47 (COSEM transport over TCP/UDP) wrapper: an 8-byte header in front of every APDU.

    version (2 bytes, 0x0001) | source wPort (2) | destination wPort (2) | APDU length (2) | APDU

The client's wPort is its SAP (1 management, 16 public), the server's the logical device (1).
TCP delivers a byte stream, so ``WrapperFramer`` buffers: one read may carry part of a frame or
several frames; over UDP a datagram carries exactly one frame (``decode_datagram``). The framer is
sans-IO; transports feed it and take complete frames out. A ``Framer`` protocol keeps the transport
independent of the framing (HDLC can replace it later).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

from openami.protocols.dlms.errors import DecodeError, EncodeError

__all__ = [
    "DEFAULT_MAX_APDU_LENGTH",
    "HEADER_SIZE",
    "WRAPPER_VERSION",
    "Frame",
    "Framer",
    "WrapperFrame",
    "WrapperFramer",
    "WrapperHeader",
    "decode_datagram",
    "encode_wrapper",
]

WRAPPER_VERSION = 0x0001
HEADER_SIZE = 8
DEFAULT_MAX_APDU_LENGTH = 0xFFFF
"""The 2-byte length field's limit; pass a smaller ``max_apdu_length`` to refuse larger frames early."""

_HEADER = struct.Struct(">HHHH")


@dataclass(frozen=True, slots=True)
class WrapperHeader:
    """The wrapper header (IEC 62056-47, clause 6.2 "The wrapper protocol data unit")."""

    source_wport: int
    dest_wport: int
    length: int
    version: int = WRAPPER_VERSION

    def to_bytes(self) -> bytes:
        """The 8 header bytes; EncodeError when a field does not fit 16 bits."""
        for name, value in (("source wPort", self.source_wport), ("destination wPort", self.dest_wport)):
            if not 0 <= value <= 0xFFFF:
                raise EncodeError(f"{name} {value} is not 0-65535")
        if not 0 <= self.length <= 0xFFFF:
            raise EncodeError(f"APDU of {self.length} bytes does not fit the wrapper's 2-byte length")
        return _HEADER.pack(self.version, self.source_wport, self.dest_wport, self.length)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Read a header (any version; the framer checks it); DecodeError when fewer than 8 bytes."""
        if len(data) < HEADER_SIZE:
            raise DecodeError(f"wrapper header of {len(data)} bytes", offset=0, expected="8 header bytes")
        version, source, dest, length = _HEADER.unpack_from(data)
        return cls(source_wport=source, dest_wport=dest, length=length, version=version)


@dataclass(frozen=True, slots=True)
class WrapperFrame:
    """One complete wrapper frame: the ports and the APDU it carries."""

    source_wport: int
    dest_wport: int
    apdu: bytes


def encode_wrapper(source_wport: int, dest_wport: int, apdu: bytes) -> bytes:
    """Frame ``apdu`` for TCP with wrapper version 1; EncodeError when it exceeds 65535 bytes.

    Header and APDU come back as one ``bytes`` so that the transport sends each frame in one write.
    """
    if 0 <= source_wport <= 0xFFFF and 0 <= dest_wport <= 0xFFFF and len(apdu) <= 0xFFFF:
        return _HEADER.pack(WRAPPER_VERSION, source_wport, dest_wport, len(apdu)) + apdu
    return WrapperHeader(source_wport, dest_wport, len(apdu)).to_bytes() + apdu  # raises the EncodeError


def decode_datagram(data: bytes, *, max_apdu_length: int = DEFAULT_MAX_APDU_LENGTH) -> WrapperFrame:
    """The one frame a UDP datagram carries; DecodeError for a short datagram, a wrong version, a
    length above ``max_apdu_length``, or a length that does not match the datagram's size."""
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"datagram of {len(data)} bytes", offset=0, expected="8 header bytes")
    version, source, dest, length = _HEADER.unpack_from(data)
    if version != WRAPPER_VERSION:
        raise DecodeError(f"wrapper version 0x{version:04X}", offset=0, expected=f"version 0x{WRAPPER_VERSION:04X}")
    if length > max_apdu_length:
        raise DecodeError(
            f"wrapper APDU length {length} exceeds the limit", offset=6, expected=f"at most {max_apdu_length} bytes"
        )
    if HEADER_SIZE + length != len(data):
        raise DecodeError(
            f"wrapper length {length} in a datagram of {len(data)} bytes", offset=6, expected="one whole frame"
        )
    return WrapperFrame(source, dest, bytes(data[HEADER_SIZE:]))


class Frame(Protocol):
    """What any framer yields: at least the APDU."""

    @property
    def apdu(self) -> bytes: ...


FrameT_co = TypeVar("FrameT_co", bound=Frame, covariant=True)


class Framer(Protocol[FrameT_co]):
    """Sans-IO byte-stream framing: ``feed`` what the transport read, ``next_frame`` until None."""

    def feed(self, data: bytes) -> None: ...

    def next_frame(self) -> FrameT_co | None: ...


class WrapperFramer:
    """Reassemble wrapper frames from a TCP byte stream (partial and coalesced reads).

    ``next_frame`` returns the next complete frame, or None while more bytes are needed. A wrong
    version or a length above ``max_apdu_length`` raises DecodeError; the stream cannot be
    resynchronised after that, so the framer keeps raising and the connection should be closed.
    """

    def __init__(self, *, max_apdu_length: int = DEFAULT_MAX_APDU_LENGTH) -> None:
        if not 0 < max_apdu_length <= 0xFFFF:
            raise ValueError(f"max_apdu_length {max_apdu_length} is not 1-65535")
        self._max = max_apdu_length
        self._buffer = bytearray()
        self._consumed = 0  # bytes of the stream already returned as frames, for error offsets

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the transport."""
        self._buffer += data

    def next_frame(self) -> WrapperFrame | None:
        """The next complete frame, None when more bytes are needed; DecodeError on a bad header."""
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            return None
        version, source, dest, length = _HEADER.unpack_from(buffer)
        if version != WRAPPER_VERSION:
            raise DecodeError(
                f"wrapper version 0x{version:04X}", offset=self._consumed, expected=f"version 0x{WRAPPER_VERSION:04X}"
            )
        if length > self._max:
            raise DecodeError(
                f"wrapper APDU length {length} exceeds the limit",
                offset=self._consumed + 6,
                expected=f"at most {self._max} bytes",
            )
        end = HEADER_SIZE + length
        if len(buffer) < end:
            return None
        apdu = bytes(buffer[HEADER_SIZE:end])
        del buffer[:end]
        self._consumed += end
        return WrapperFrame(source, dest, apdu)
