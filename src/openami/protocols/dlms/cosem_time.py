"""COSEM date, time and date-time (IEC 62056-6-2, clause 4.1.6.1, "Date and time formats").

``date-time`` is 12 bytes: year (2, 0xFFFF = not specified), month, day of month, day of week
(1 = Monday), hour, minute, second, hundredths (0xFF = not specified), deviation (int16 minutes,
0x8000 = not specified) and clock status (0xFF = not specified). Month 0xFD/0xFE mean daylight
saving end/begin and day 0xFD/0xFE the second-last/last day of the month; these special values are
kept as they are (decoding is lenient, only ``to_datetime`` needs a concrete instant).

Deviation sign (Blue Book convention, which is the opposite of ISO 8601 offsets):
``local time = UTC - deviation``, so Central European Time (UTC+01:00) has deviation -60, and
``UTC = local time + deviation``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Self

from openami.protocols.dlms.errors import DecodeError, DlmsError, EncodeError

__all__ = [
    "DEVIATION_NOT_SPECIFIED",
    "NOT_SPECIFIED",
    "YEAR_NOT_SPECIFIED",
    "CosemDate",
    "CosemDateTime",
    "CosemTime",
]

NOT_SPECIFIED = 0xFF
"""A one-byte field that is not specified (a wildcard)."""
YEAR_NOT_SPECIFIED = 0xFFFF
DEVIATION_NOT_SPECIFIED = -0x8000
"""The int16 value of ``0x8000`` on the wire; decoded as ``deviation=None``."""

_DATE_TIME = struct.Struct(">HBBBBBBBhB")
_DATE = struct.Struct(">HBBB")
_TIME = struct.Struct(">BBBB")


def _check_byte(name: str, value: int) -> None:
    if type(value) is not int or not 0 <= value <= 0xFF:
        raise EncodeError(f"COSEM {name} {value!r} is not an integer 0-255")


def _check_year(year: int) -> None:
    if type(year) is not int or not 0 <= year <= 0xFFFF:
        raise EncodeError(f"COSEM year {year!r} is not an integer 0-65535")


def _concrete(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise DlmsError(f"COSEM {name} {value} is not specified or not a concrete value")
    return value


@dataclass(frozen=True, slots=True)
class CosemDate:
    """COSEM ``date`` (5 bytes: year, month, day of month, day of week)."""

    year: int
    month: int
    day: int
    weekday: int = NOT_SPECIFIED

    def __post_init__(self) -> None:
        _check_year(self.year)
        _check_byte("month", self.month)
        _check_byte("day", self.day)
        _check_byte("weekday", self.weekday)

    def to_bytes(self) -> bytes:
        return _DATE.pack(self.year, self.month, self.day, self.weekday)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Read the 5-byte form; raises DecodeError for another length."""
        if len(data) != 5:
            raise DecodeError(f"COSEM date of {len(data)} bytes", offset=0, expected="5 bytes")
        return cls(*_DATE.unpack(data))

    @classmethod
    def from_date(cls, value: date) -> Self:
        return cls(value.year, value.month, value.day, value.isoweekday())

    def to_date(self) -> date:
        """The calendar date; raises DlmsError when a field is not specified or special."""
        try:
            return date(
                _concrete("year", self.year, 1, 9999),
                _concrete("month", self.month, 1, 12),
                _concrete("day", self.day, 1, 31),
            )
        except ValueError as exc:
            raise DlmsError(f"COSEM date is not a calendar date: {exc}") from None


@dataclass(frozen=True, slots=True)
class CosemTime:
    """COSEM ``time`` (4 bytes: hour, minute, second, hundredths)."""

    hour: int
    minute: int
    second: int
    hundredths: int = NOT_SPECIFIED

    def __post_init__(self) -> None:
        _check_byte("hour", self.hour)
        _check_byte("minute", self.minute)
        _check_byte("second", self.second)
        _check_byte("hundredths", self.hundredths)

    def to_bytes(self) -> bytes:
        return _TIME.pack(self.hour, self.minute, self.second, self.hundredths)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Read the 4-byte form; raises DecodeError for another length."""
        if len(data) != 4:
            raise DecodeError(f"COSEM time of {len(data)} bytes", offset=0, expected="4 bytes")
        return cls(*_TIME.unpack(data))

    @classmethod
    def from_time(cls, value: time) -> Self:
        return cls(value.hour, value.minute, value.second, value.microsecond // 10_000)

    def to_time(self) -> time:
        """The time of day (hundredths not specified count as 0); raises DlmsError on wildcards."""
        hundredths = 0 if self.hundredths == NOT_SPECIFIED else _concrete("hundredths", self.hundredths, 0, 99)
        return time(
            _concrete("hour", self.hour, 0, 23),
            _concrete("minute", self.minute, 0, 59),
            _concrete("second", self.second, 0, 59),
            hundredths * 10_000,
        )


@dataclass(frozen=True, slots=True)
class CosemDateTime:
    """COSEM ``date-time`` (12 bytes); ``deviation``/``clock_status`` are None when not specified.

    ``deviation`` is in minutes with the Blue Book sign: local time = UTC - deviation.
    """

    year: int
    month: int
    day: int
    weekday: int
    hour: int
    minute: int
    second: int
    hundredths: int
    deviation: int | None
    clock_status: int | None

    def __post_init__(self) -> None:
        _check_year(self.year)
        for name in ("month", "day", "weekday", "hour", "minute", "second", "hundredths"):
            _check_byte(name, getattr(self, name))
        if self.deviation is not None and (
            type(self.deviation) is not int or not DEVIATION_NOT_SPECIFIED < self.deviation <= 0x7FFF
        ):
            raise EncodeError(f"COSEM deviation {self.deviation!r} is not an int16 other than -32768")
        if self.clock_status is not None and (
            type(self.clock_status) is not int or not 0 <= self.clock_status < NOT_SPECIFIED
        ):
            raise EncodeError(f"COSEM clock status {self.clock_status!r} is not an integer 0-254")

    def to_bytes(self) -> bytes:
        """The 12-byte octet-string form."""
        return _DATE_TIME.pack(
            self.year,
            self.month,
            self.day,
            self.weekday,
            self.hour,
            self.minute,
            self.second,
            self.hundredths,
            DEVIATION_NOT_SPECIFIED if self.deviation is None else self.deviation,
            NOT_SPECIFIED if self.clock_status is None else self.clock_status,
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Read the 12-byte form (no field is checked beyond its width); DecodeError on another length."""
        if len(data) != 12:
            raise DecodeError(f"COSEM date-time of {len(data)} bytes", offset=0, expected="12 bytes")
        year, month, day, weekday, hour, minute, second, hundredths, deviation, status = _DATE_TIME.unpack(data)
        return cls(
            year,
            month,
            day,
            weekday,
            hour,
            minute,
            second,
            hundredths,
            None if deviation == DEVIATION_NOT_SPECIFIED else deviation,
            None if status == NOT_SPECIFIED else status,
        )

    @classmethod
    def from_datetime(cls, dt: datetime, deviation: int = 0, *, clock_status: int | None = 0) -> Self:
        """Express an aware datetime as local time with the given deviation (local = UTC - deviation).

        Raises EncodeError for a naive datetime or a deviation outside -720..720 minutes.
        """
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise EncodeError("COSEM date-time needs a timezone-aware datetime")
        if type(deviation) is not int or not -720 <= deviation <= 720:
            raise EncodeError(f"COSEM deviation {deviation!r} is not an integer -720..720 minutes")
        local = dt.astimezone(UTC).replace(tzinfo=None) - timedelta(minutes=deviation)
        return cls(
            local.year,
            local.month,
            local.day,
            local.isoweekday(),
            local.hour,
            local.minute,
            local.second,
            local.microsecond // 10_000,
            deviation,
            clock_status,
        )

    def to_datetime(self) -> datetime:
        """The instant as an aware UTC datetime (UTC = local + deviation).

        Hundredths that are not specified count as 0. Raises DlmsError when the date, the time or
        the deviation is not specified, or the fields do not form a real date.
        """
        if self.deviation is None:
            raise DlmsError("COSEM date-time has no deviation: it cannot be placed in UTC")
        hundredths = 0 if self.hundredths == NOT_SPECIFIED else _concrete("hundredths", self.hundredths, 0, 99)
        try:
            local = datetime(  # noqa: DTZ001 - local wall time, placed in UTC just below
                _concrete("year", self.year, 1, 9999),
                _concrete("month", self.month, 1, 12),
                _concrete("day", self.day, 1, 31),
                _concrete("hour", self.hour, 0, 23),
                _concrete("minute", self.minute, 0, 59),
                _concrete("second", self.second, 0, 59),
                hundredths * 10_000,
            )
            return (local + timedelta(minutes=self.deviation)).replace(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise DlmsError(f"COSEM date-time is not a calendar instant: {exc}") from None
