"""Messages the components exchange over the bus (head-end → MDM → services); pure data.

Times inside hot, per-interval columns are epoch seconds (UTC) rather than datetimes: a day's read
of one meter carries hundreds of values and the MDM validates millions of them a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from openami.domain.readings import RegisterSnapshot


@dataclass(frozen=True, slots=True)
class CollectedReadings:
    """Everything one successful read of one meter returned, as the head-end publishes it.

    Only readings that passed the meter's cryptographic authentication are ever put in such a
    message: the head-end drops the rest, so the MDM never sees them.

    The load profile is columnar: ``interval_ends[i]`` (epoch s, UTC, end of the interval) goes
    with ``import_wh[i]``, ``export_wh[i]`` (energy in Wh during the interval) and ``status[i]``
    (the meter's profile status byte, 0 = nothing to report). Columns have equal lengths and
    ascending ends. ``requested_from`` and ``requested_to`` are the interval ends (epoch s, both
    inclusive, multiples of ``interval_s``) the head-end asked for, so that the MDM can tell which
    intervals are missing. ``meter_clock`` is the meter's clock read in the same session as
    ``read_at`` (the head-end's clock), or None when it was not read.
    """

    meter_id: int
    read_at: datetime
    meter_clock: datetime | None
    requested_from: int
    requested_to: int
    interval_ends: tuple[int, ...]
    import_wh: tuple[float, ...]
    export_wh: tuple[float, ...]
    status: tuple[int, ...]
    registers: tuple[RegisterSnapshot, ...] = ()
    interval_s: int = 900

    def __post_init__(self) -> None:
        n = len(self.interval_ends)
        if not len(self.import_wh) == len(self.export_wh) == len(self.status) == n:
            raise ValueError("profile columns must have equal lengths")
        if self.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if self.read_at.utcoffset() is None or (self.meter_clock is not None and self.meter_clock.utcoffset() is None):
            raise ValueError("read_at and meter_clock must be timezone-aware")

    @property
    def value_count(self) -> int:
        """Number of interval values carried (two channels per interval)."""
        return 2 * len(self.interval_ends)


@dataclass(frozen=True, slots=True)
class ReadingCounts:
    """What the MDM made of one meter's read: values stored and how many were estimated or flagged."""

    values: int = 0
    estimated: int = 0
    flagged: int = 0


@dataclass(frozen=True, slots=True)
class ReadingsStored:
    """Published by the MDM once a meter's read is durably stored (validated and estimated).

    ``first_interval_end``/``last_interval_end`` (epoch s) bound the intervals that were written,
    estimates included; both are 0 when nothing was written.
    """

    meter_id: int
    counts: ReadingCounts
    first_interval_end: int = 0
    last_interval_end: int = 0
