"""OBIS codes: the six-group logical names of COSEM objects (IEC 62056-6-1, clause 4).

On the wire a logical name is a 6-byte octet-string (IEC 62056-6-2, class attribute 1); in text it
is written ``A.B.C.D.E.F`` (``A-B:C.D.E*F`` is also read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Self, cast

from openami.protocols.dlms.errors import DecodeError, EncodeError

__all__ = [
    "ACTIVE_EXPORT",
    "ACTIVE_IMPORT",
    "CLOCK",
    "COMMAND_GATEWAY",
    "CURRENT_ASSOCIATION",
    "DISCONNECT_CONTROL",
    "EVENT_CODE",
    "EVENT_LOG",
    "EVENT_VALUE",
    "INSTANT_CURRENT",
    "INSTANT_POWER",
    "INSTANT_VOLTAGE",
    "INVOCATION_COUNTER",
    "LIMITER",
    "LOAD_PROFILE",
    "LOAD_SIDE_VOLTAGE",
    "PUSH_SETUP",
    "SECURITY_SETUP",
    "SERIAL",
    "Obis",
]

_SEPARATORS = re.compile(r"[.\-:*]")


@dataclass(frozen=True, slots=True)
class Obis:
    """A logical name: value groups A to F, each 0-255 (raises EncodeError otherwise)."""

    a: int
    b: int
    c: int
    d: int
    e: int
    f: int

    def __post_init__(self) -> None:
        for group in (self.a, self.b, self.c, self.d, self.e, self.f):
            if type(group) is not int or not 0 <= group <= 255:
                raise EncodeError(f"OBIS value group {group!r} is not an integer 0-255")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Read ``"1.0.1.8.0.255"`` (or ``"1-0:1.8.0*255"``); raises DecodeError on anything else."""
        parts = _SEPARATORS.split(text.strip())
        if len(parts) != 6 or not all(p.isdigit() and p.isascii() and len(p) <= 3 for p in parts):
            raise DecodeError(f"not an OBIS code: {text[:40]!r}", offset=0, expected="six integers 0-255")
        groups = [int(p) for p in parts]
        if any(g > 255 for g in groups):
            raise DecodeError(f"OBIS value group above 255 in {text[:40]!r}", offset=0, expected="0-255")
        return cls(*groups)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Build from the 6-byte logical-name octet-string; raises DecodeError for another length."""
        if len(data) != 6:
            raise DecodeError(f"logical name of {len(data)} bytes", offset=0, expected="6 bytes")
        if cls is Obis:
            return cast(Self, _from_bytes(bytes(data)))
        a, b, c, d, e, f = bytes(data)
        return cls(a, b, c, d, e, f)

    def to_bytes(self) -> bytes:
        """The 6-byte octet-string form."""
        return bytes((self.a, self.b, self.c, self.d, self.e, self.f))

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __str__(self) -> str:
        return f"{self.a}.{self.b}.{self.c}.{self.d}.{self.e}.{self.f}"


@lru_cache(maxsize=4096)
def _from_bytes(data: bytes) -> Obis:
    """Logical names repeat in every request: build each one once (``Obis`` is immutable)."""
    a, b, c, d, e, f = data
    return Obis(a, b, c, d, e, f)


CLOCK = Obis(0, 0, 1, 0, 0, 255)
"""Clock (class 8)."""
SERIAL = Obis(0, 0, 96, 1, 0, 255)
"""Device ID 1, the manufacturing serial number (Data, class 1)."""
ACTIVE_IMPORT = Obis(1, 0, 1, 8, 0, 255)
"""Active energy import (+A), total (Register, class 3)."""
ACTIVE_EXPORT = Obis(1, 0, 2, 8, 0, 255)
"""Active energy export (-A), total (Register, class 3)."""
LOAD_PROFILE = Obis(1, 0, 99, 1, 0, 255)
"""Load profile 1 (Profile Generic, class 7)."""
DISCONNECT_CONTROL = Obis(0, 0, 96, 3, 10, 255)
"""Disconnect control (class 70)."""
CURRENT_ASSOCIATION = Obis(0, 0, 40, 0, 0, 255)
"""The current association (Association LN, class 15)."""
SECURITY_SETUP = Obis(0, 0, 43, 0, 0, 255)
"""Security setup (class 64)."""
INVOCATION_COUNTER = Obis(0, 0, 43, 1, 1, 255)
"""The frame counter the meter expects next from the management client (Data, class 1)."""
PUSH_SETUP = Obis(0, 0, 25, 9, 0, 255)
"""Push setup 1 (class 40): what the meter pushes for events, and where."""
EVENT_LOG = Obis(0, 0, 99, 98, 0, 255)
"""The standard event log (Profile Generic, class 7): ``{clock, event code, value}`` rows."""
EVENT_CODE = Obis(0, 0, 96, 11, 0, 255)
"""The last event code (Data, class 1), captured in the event log."""
EVENT_VALUE = Obis(0, 128, 96, 11, 0, 255)
"""The last event's value (Data, class 1, manufacturer-specific: float64 or null), the event log's third column."""
COMMAND_GATEWAY = Obis(0, 128, 96, 3, 10, 255)
"""openami's Signed Command Gateway (manufacturer-specific class 200): signed switch and limiter commands."""
LIMITER = Obis(0, 0, 17, 0, 0, 255)
"""Limiter (class 71)."""
INSTANT_VOLTAGE = Obis(1, 0, 32, 7, 0, 255)
"""Instantaneous voltage L1, supply side (Register, class 3)."""
INSTANT_CURRENT = Obis(1, 0, 31, 7, 0, 255)
"""Instantaneous current L1 (Register, class 3)."""
INSTANT_POWER = Obis(1, 0, 1, 7, 0, 255)
"""Instantaneous active power import (Register, class 3): the Limiter's monitored value."""
LOAD_SIDE_VOLTAGE = Obis(1, 128, 32, 7, 0, 255)
"""Voltage on the customer's side of the switch (manufacturer-specific Register): backfeed detection."""
