"""A simulated meter's energy: a load function, cumulative registers and the load profile rows.

The load function gives the Wh imported and exported during the 15-minute interval ending at a
UTC epoch second. Registers are cumulative: the import/export register at an interval end is the
meter's starting reading plus the sum of every interval since commissioning, and the load profile
captures exactly those register values, so the profile and the registers always agree. Rows are
computed on demand (prefix sums cached as time moves on), never stored per meter.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from itertools import repeat

from openami.protocols.dlms.connection import EncodedData
from openami.protocols.dlms.cosem import EncodedRows

__all__ = [
    "INTERVAL_S",
    "LoadFunction",
    "MeterEnergy",
    "SimulatedProfile",
    "default_load",
    "encode_clock",
    "encode_row",
    "encode_rows",
]

INTERVAL_S = 900
LoadFunction = Callable[[int], tuple[int, int]]
"""load(interval_end_epoch) -> (Wh imported, Wh exported) during the interval ending then."""

_DATE_TIME = struct.Struct(">HBBBBBBBhB")
_ROW = struct.Struct(">BBBBHBBBBBBBhBBIBIBB")
"""A profile row as the meter sends it: structure of 4 {octet-string(12) date-time, double-long-unsigned
import, double-long-unsigned export, unsigned status} (IEC 62056-6-2 A-XDR), packed in one call."""
_STAMP = struct.Struct(">BBBBHBBBBBBBhB")
_VALUES = struct.Struct(">16sBIBIBB")
"""The same row as a 16-byte stamp (structure and clock, shared by every meter) and the values."""
_DAY_S = 86_400
# A plain residential day in 96 quarter-hours, in percent of the meter's base load: night trough,
# morning bump, flat day, evening peak.
_DAY_SHAPE = tuple(
    60 + (80 if 26 <= q < 34 else 0) + (20 if 34 <= q < 68 else 0) + (150 if 70 <= q < 88 else 0) for q in range(96)
)
_MASK32 = 0xFFFFFFFF


@lru_cache(maxsize=4096)
def _date_fields(day: int) -> tuple[int, int, int, int]:
    """(year, month, day of month, ISO weekday) of a day number since the epoch (UTC)."""
    t = datetime.fromtimestamp(day * _DAY_S, UTC)
    return t.year, t.month, t.day, t.isoweekday()


def encode_row(end: int, imported: int, exported: int, status: int = 0) -> EncodedData:
    """The encoded profile row of the interval ending at ``end`` (epoch seconds, UTC)."""
    day, second = divmod(end, _DAY_S)
    year, month, mday, weekday = _date_fields(day)
    return EncodedData(
        _ROW.pack(2, 4, 9, 12, year, month, mday, weekday, second // 3600, second // 60 % 60, second % 60, 0, 0, 0,
                  6, imported & 0xFFFFFFFF, 6, exported & 0xFFFFFFFF, 17, status)
    )  # fmt: skip


@lru_cache(maxsize=8192)
def _stamp(end: int) -> bytes:
    """A row's first 16 bytes (structure of 4, clock octet-string) for an interval end; cached: every
    meter of a fleet shares the same interval ends."""
    day, second = divmod(end, _DAY_S)
    year, month, mday, weekday = _date_fields(day)
    return _STAMP.pack(2, 4, 9, 12, year, month, mday, weekday, second // 3600, second // 60 % 60, second % 60, 0, 0, 0)


def encode_rows(ends: range, imported: list[int], exported: list[int]) -> EncodedRows:
    """Rows for the interval ends ``ends`` (status 0), as :func:`encode_row` gives them, in one go.

    ``map`` over the cached stamps and one ``struct`` call per row: no Python code runs per row.
    """
    count = len(ends)
    if count and (max(imported) > _MASK32 or max(exported) > _MASK32 or min(imported) < 0 or min(exported) < 0):
        imported = [value & _MASK32 for value in imported]
        exported = [value & _MASK32 for value in exported]
    six, seventeen, zero = repeat(6, count), repeat(17, count), repeat(0, count)
    data = b"".join(map(_VALUES.pack, map(_stamp, ends), six, imported, repeat(6, count), exported, seventeen, zero))
    return EncodedRows(count, data)


def encode_clock(epoch: int) -> bytes:
    """The 12-byte COSEM date-time of a UTC epoch second (deviation 0, status 0, hundredths 0)."""
    t = datetime.fromtimestamp(epoch, UTC)
    return _DATE_TIME.pack(t.year, t.month, t.day, t.isoweekday(), t.hour, t.minute, t.second, 0, 0, 0)


def default_load(serial: str) -> LoadFunction:
    """A simple deterministic daily shape seeded by the serial (a few kWh a day, some solar export).

    Realistic residential and commercial models live in ``openami.sim.loadshape``; any function of
    the interval end can be plugged in instead.
    """
    seed = zlib.crc32(serial.encode())
    base = 30 + seed % 40
    solar = seed % 4 == 0

    def load(interval_end_epoch: int) -> tuple[int, int]:
        slot = interval_end_epoch // INTERVAL_S
        noise = ((slot * 2654435761) ^ seed) & _MASK32
        imported = base * _DAY_SHAPE[slot % 96] // 100 + noise % 17
        exported = 0
        if solar and 36 <= slot % 96 < 64:
            exported = (noise >> 8) % 60 + 20
        return imported, exported

    return load


class MeterEnergy:
    """Cumulative energy registers of one meter, and its load profile as computed rows.

    ``commissioned`` is the first interval end (epoch seconds, a multiple of 900); the registers
    start at ``start_import``/``start_export`` Wh just before it.
    """

    def __init__(self, load: LoadFunction, commissioned: int, *, start_import: int = 0, start_export: int = 0) -> None:
        if commissioned % INTERVAL_S:
            raise ValueError("commissioned must be an interval end (a multiple of 900 s)")
        self.load = load
        self.commissioned = commissioned
        self._import = [start_import]  # _import[i]: register after the i-th interval since commissioning
        self._export = [start_export]

    def _extend(self, count: int) -> None:
        imported, exported, load = self._import, self._export, self.load
        end = self.commissioned + (len(imported) - 1) * INTERVAL_S
        while len(imported) <= count:
            wh_in, wh_out = load(end)
            imported.append(imported[-1] + wh_in)
            exported.append(exported[-1] + wh_out)
            end += INTERVAL_S

    def index(self, interval_end: int) -> int:
        """1-based number of the interval ending at ``interval_end`` (0 = before commissioning)."""
        return max(0, (interval_end - self.commissioned) // INTERVAL_S + 1)

    def registers_at(self, epoch: float) -> tuple[int, int]:
        """(import, export) Wh at an instant: everything up to the last interval that ended."""
        count = self.index(int(epoch) - int(epoch) % INTERVAL_S)
        self._extend(count)
        return self._import[count], self._export[count]

    def rows(self, first_end: int, last_end: int) -> EncodedRows:
        """Profile rows (clock, import, export, status) for interval ends first..last (inclusive)."""
        first = max(self.index(first_end), 1)
        last = max(self.index(last_end), first - 1)
        self._extend(last)
        ends = range(self.commissioned + (first - 1) * INTERVAL_S, self.commissioned + last * INTERVAL_S, INTERVAL_S)
        return encode_rows(ends, self._import[first : last + 1], self._export[first : last + 1])


class SimulatedProfile:
    """The load profile's buffer as a ProfileSource: the last ``entries`` intervals of meter time.

    ``meter_time`` is the meter's clock (drift included); entry 1 is the oldest interval kept.
    """

    def __init__(self, energy: MeterEnergy, meter_time: Callable[[], datetime], entries: int) -> None:
        self.energy = energy
        self.meter_time = meter_time
        self.entries_max = entries

    def _window(self) -> tuple[int, int]:
        now = int(self.meter_time().timestamp())
        last = now - now % INTERVAL_S
        first = max(self.energy.commissioned, last - (self.entries_max - 1) * INTERVAL_S)
        return first, last

    def entries_in_use(self) -> int:
        first, last = self._window()
        return max(0, (last - first) // INTERVAL_S + 1)

    def rows(self, from_dt: datetime | None, to_dt: datetime | None) -> EncodedRows:
        first, last = self._window()
        if from_dt is not None:
            start = from_dt.timestamp()
            first = max(first, int(-(-start // INTERVAL_S)) * INTERVAL_S)
        if to_dt is not None:
            end = int(to_dt.timestamp() // 1)
            last = min(last, end - end % INTERVAL_S)
        return self.energy.rows(first, last)

    def entries(self, first: int, last: int) -> EncodedRows:
        oldest, _ = self._window()
        return self.energy.rows(oldest + (first - 1) * INTERVAL_S, oldest + (last - 1) * INTERVAL_S)
