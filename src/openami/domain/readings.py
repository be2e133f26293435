"""Readings with their provenance: source, quality flags, measured/received times and version."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Channel(enum.StrEnum):
    """Interval channels, named after the OBIS code of the register they integrate."""

    ACTIVE_IMPORT = "1.0.1.8.0.255"
    ACTIVE_EXPORT = "1.0.2.8.0.255"


class Quality(enum.IntFlag):
    """Quality flags carried by every stored value (0 = valid as measured)."""

    VALID = 0
    ESTIMATED = 1 << 0
    GAP = 1 << 1
    NEGATIVE = 1 << 2
    IMPLAUSIBLE = 1 << 3
    SPIKE = 1 << 4
    REGISTER_MISMATCH = 1 << 5
    CLOCK_ERROR = 1 << 6
    METER_STATUS = 1 << 7  # the meter's own status word flagged the interval
    EDITED = 1 << 8


class Source(enum.StrEnum):
    METER = "meter"
    ESTIMATED = "estimated"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class IntervalReading:
    """One interval value in Wh (energy during the interval ending at ``interval_end``)."""

    meter_id: int
    channel: Channel
    interval_end: datetime
    value: float
    unit: str = "Wh"
    quality: Quality = Quality.VALID
    source: Source = Source.METER
    measured_at: datetime | None = None
    received_at: datetime | None = None
    version: int = 1


@dataclass(frozen=True, slots=True)
class RegisterSnapshot:
    """A cumulative register value (e.g. the midnight import register) in its unit."""

    meter_id: int
    obis: str
    captured_at: datetime
    value: float
    unit: str
    received_at: datetime
    quality: Quality = Quality.VALID


@dataclass(frozen=True, slots=True)
class CommunicationFailure:
    """A failed exchange with a meter: which meter, which step, what cause."""

    meter_id: int
    step: str
    cause: str
    occurred_at: datetime
