"""Validation, estimation and editing (VEE) of one meter's read, as pure functions over columns.

``validate(msg, settings, state, history)`` turns a :class:`CollectedReadings` into rows for
``openami.db.readings.write_intervals`` — ``(meter_id, channel, interval_end, value, quality,
source, received_at)`` — with quality flags set and missing intervals estimated. The rules and
their order are described in docs/vee.md.

Speed matters (millions of values a second): a read is handled column by column with C-level
built-ins (``min``, ``max``, ``sum``, ``any``, ``zip``); a per-value Python loop only runs for a
read that actually breaks a rule. Times are epoch seconds, never datetimes, in the hot path.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise, repeat
from math import fsum
from typing import NamedTuple

from openami.domain.codes import ChannelCode, SourceCode
from openami.domain.messages import CollectedReadings, ReadingCounts
from openami.domain.readings import Channel, Quality
from openami.mdm.estimation import WEEK_S, estimate_gaps, gap_runs, prorate
from openami.settings import VeeSettings

Row = tuple[int, int, int, float, int, int, int]
"""(meter_id, channel, interval_end epoch s, value Wh, quality, source, received_at epoch s)."""

History = Mapping[int, Mapping[int, float]]
"""Earlier usable actual values of one meter: channel code → interval end (epoch s) → Wh."""

# Storage codes as plain ints (cheaper in millions of row tuples than the IntEnum members).
CHANNEL_IMPORT = int(ChannelCode.ACTIVE_IMPORT)
CHANNEL_EXPORT = int(ChannelCode.ACTIVE_EXPORT)
SOURCE_METER = int(SourceCode.METER)
SOURCE_ESTIMATED = int(SourceCode.ESTIMATED)

NEGATIVE = int(Quality.NEGATIVE)
IMPLAUSIBLE = int(Quality.IMPLAUSIBLE)
SPIKE = int(Quality.SPIKE)
REGISTER_MISMATCH = int(Quality.REGISTER_MISMATCH)
CLOCK_ERROR = int(Quality.CLOCK_ERROR)
METER_STATUS = int(Quality.METER_STATUS)
ESTIMATED_GAP = int(Quality.ESTIMATED | Quality.GAP)
UNUSABLE = NEGATIVE | IMPLAUSIBLE | SPIKE | REGISTER_MISMATCH
"""Flags that keep a value out of estimation (as a neighbour, like-day or shape sample)."""

_REGISTER_CHANNEL = {str(Channel.ACTIVE_IMPORT): CHANNEL_IMPORT, str(Channel.ACTIVE_EXPORT): CHANNEL_EXPORT}
_UNIT_WH = {"Wh": 1.0, "kWh": 1_000.0, "MWh": 1_000_000.0}
_TYPICAL_WEIGHT = 0.25  # how fast a meter's typical follows its recent reads (EWMA of read medians)
_NO_HISTORY: History = {}
_NO_VALUES: Mapping[int, float] = {}


class MeterState(NamedTuple):
    """What VEE remembers about a meter between reads (the caller keeps it, e.g. in memory).

    ``typical_*``: a robust typical interval value (Wh), an exponentially weighted mean of the
    medians of recent reads' nonzero values. ``*_register``: the latest register
    snapshot seen, ``(epoch s, Wh)``, to check the next read's intervals against.
    """

    typical_import: float | None = None
    typical_export: float | None = None
    import_register: tuple[int, float] | None = None
    export_register: tuple[int, float] | None = None


@dataclass(frozen=True, slots=True)
class VeeResult:
    """Rows ready for storage, with counts, the range they cover and the meter's new state."""

    rows: list[Row]
    counts: ReadingCounts
    first_end: int
    last_end: int
    missing: tuple[int, ...]
    state: MeterState


@dataclass(slots=True)
class _Read:
    """One read's shared facts, computed once for both channels."""

    msg: CollectedReadings
    settings: VeeSettings
    history: History
    ends: tuple[int, ...]
    missing: list[int]
    received: int
    base: int  # flags every actual value of this read carries (clock error)
    flags: list[int] | None  # per-interval flags shared by both channels, None when all are ``base``
    registers: dict[int, list[tuple[int, float]]] = field(default_factory=dict)


def validate(
    msg: CollectedReadings,
    settings: VeeSettings,
    state: MeterState | None = None,
    history: History | None = None,
) -> VeeResult:
    """Validate and estimate one read; rows for both channels, actual values then estimates."""
    state = state or MeterState()
    ends, columns, missing, misaligned = _columns(msg)
    base = _clock_flag(msg, settings.clock_tolerance_s)
    read = _Read(
        msg=msg,
        settings=settings,
        history=history or _NO_HISTORY,
        ends=ends,
        missing=missing,
        received=int(msg.read_at.timestamp()),
        base=base,
        flags=_row_flags(ends, columns[2], base, settings.status_flag_mask, msg.interval_s if misaligned else 0),
        registers=_register_points(msg),
    )
    rows: list[Row] = []
    imp_typical, imp_register, imp_flagged = _channel(
        read, CHANNEL_IMPORT, columns[0], state.typical_import, state.import_register, rows
    )
    exp_typical, exp_register, exp_flagged = _channel(
        read, CHANNEL_EXPORT, columns[1], state.typical_export, state.export_register, rows
    )
    actual = 2 * len(ends)
    first, last = (ends[0], ends[-1]) if ends else (0, 0)
    if len(rows) > actual:  # estimates were appended after the actual values
        estimated_ends = [row[2] for row in rows[actual:]]
        first = min(estimated_ends) if not ends else min(first, *estimated_ends)
        last = max(last, *estimated_ends)
    return VeeResult(
        rows=rows,
        counts=ReadingCounts(values=len(rows), estimated=len(rows) - actual, flagged=imp_flagged + exp_flagged),
        first_end=first,
        last_end=last,
        missing=tuple(missing),
        state=MeterState(imp_typical, exp_typical, imp_register, exp_register),
    )


def history_window(msg: CollectedReadings, settings: VeeSettings) -> tuple[int, int] | None:
    """The interval ends ``(start, end)`` of history ``validate`` would use for this read, or None.

    None when the read has no gap, or only short gaps with both neighbours inside the read (they are
    interpolated); otherwise the like-day weeks before the first gap up to just after the last one.
    """
    ends, _, missing, _ = _columns(msg)
    if not missing:
        return None
    s = msg.interval_s
    present = set(ends)
    for run in gap_runs(missing, s):
        if len(run) > settings.short_gap_intervals or run[0] - s not in present or run[-1] + s not in present:
            return missing[0] - settings.like_day_weeks * WEEK_S - s, missing[-1] + s
    return None


@functools.lru_cache(maxsize=4096)
def expected_ends(requested_from: int, requested_to: int, interval_s: int) -> tuple[int, ...]:
    """Interval ends a read of ``[requested_from, requested_to]`` should return (both inclusive)."""
    first = -(-requested_from // interval_s) * interval_s
    return tuple(range(first, requested_to + 1, interval_s))


# --- columns, shared flags --------------------------------------------------------------------------


def _columns(
    msg: CollectedReadings,
) -> tuple[tuple[int, ...], tuple[Sequence[float], Sequence[float], Sequence[int]], list[int], bool]:
    """Ends and columns sorted and de-duplicated (the last of duplicates wins), missing ends, misalignment."""
    ends = msg.interval_ends
    columns = (msg.import_wh, msg.export_wh, msg.status)
    expected = expected_ends(msg.requested_from, msg.requested_to, msg.interval_s)
    if ends == expected:  # the common case: exactly what was asked for
        return ends, columns, [], False
    index = {t: i for i, t in enumerate(ends)}
    if len(index) != len(ends) or any(a >= b for a, b in pairwise(ends)):
        order = sorted(index)
        picks = [index[t] for t in order]
        ends = tuple(order)
        columns = tuple([col[i] for i in picks] for col in columns)  # type: ignore[assignment]
    missing = [t for t in expected if t not in index]
    misaligned = any(t % msg.interval_s for t in ends)
    return ends, columns, missing, misaligned


def _clock_flag(msg: CollectedReadings, tolerance_s: float) -> int:
    if msg.meter_clock is None:
        return 0
    return CLOCK_ERROR if abs((msg.meter_clock - msg.read_at).total_seconds()) > tolerance_s else 0


def _row_flags(ends: Sequence[int], status: Sequence[int], base: int, mask: int, misaligned_s: int) -> list[int] | None:
    """Flags both channels of an interval share: the meter's status word and a misaligned end."""
    if not misaligned_s and not (mask and any(status)):
        return None
    flags = [base | METER_STATUS if st & mask else base for st in status]
    if misaligned_s:
        flags = [f | CLOCK_ERROR if t % misaligned_s else f for f, t in zip(flags, ends, strict=True)]
    return None if flags.count(base) == len(flags) else flags


def _register_points(msg: CollectedReadings) -> dict[int, list[tuple[int, float]]]:
    """Energy register snapshots of the read, per channel, as ascending ``(epoch s, Wh)``."""
    points: dict[int, list[tuple[int, float]]] = {}
    for snap in msg.registers:
        channel = _REGISTER_CHANNEL.get(snap.obis)
        factor = _UNIT_WH.get(snap.unit)
        at = int(snap.captured_at.timestamp())
        if channel is None or factor is None:
            continue  # another register, or a unit we cannot compare
        points.setdefault(channel, []).append((at, snap.value * factor))
    for series in points.values():
        series.sort()
    return points


# --- one channel ------------------------------------------------------------------------------------


def _channel(
    read: _Read,
    channel: int,
    values: Sequence[float],
    typical: float | None,
    register: tuple[int, float] | None,
    rows: list[Row],
) -> tuple[float | None, tuple[int, float] | None, int]:
    """Flag one channel's values, estimate its gaps, check it against registers, append its rows.

    Returns the channel's new typical, its latest register and how many actual values it flagged.
    """
    s = read.settings
    nonzero = sorted(filter(None, values))
    use, typical = _typical(nonzero, typical, s.typical_min_values)
    spike_at = max(s.spike_floor_wh, s.spike_multiple * use) if use is not None and use > 0 else math.inf
    ceiling = min(spike_at, s.max_interval_wh)
    quality = _quality(values, nonzero, read, spike_at, s.max_interval_wh)
    estimates = _estimate(read, channel, values, quality) if read.missing else {}
    points = read.registers.get(channel, [])
    if register is not None and (not points or register[0] < points[0][0]):
        points = [register, *points]
    if len(points) > 1:
        quality = _check_registers(read, values, quality, estimates, points, ceiling)
    mid, received = read.msg.meter_id, read.received
    rows.extend(
        zip(
            repeat(mid),
            repeat(channel),
            read.ends,
            values,
            repeat(read.base) if quality is None else quality,
            repeat(SOURCE_METER),
            repeat(received),
        )
    )
    rows.extend([(mid, channel, t, v, ESTIMATED_GAP, SOURCE_ESTIMATED, received) for t, v in estimates.items()])
    flagged = (len(values) if read.base else 0) if quality is None else len(quality) - quality.count(0)
    return typical, points[-1] if points else register, flagged


def _typical(nonzero: list[float], cached: float | None, min_values: int) -> tuple[float | None, float | None]:
    """(typical to judge this read by, typical to remember): the cached one, else this read's median.

    ``nonzero`` is the read's nonzero values, sorted.
    """
    n = len(nonzero)
    own = None
    if n >= min_values:
        half = n // 2
        own = nonzero[half] if n % 2 else (nonzero[half - 1] + nonzero[half]) / 2
    if cached is None:
        return own, own
    return cached, cached if own is None else cached + (own - cached) * _TYPICAL_WEIGHT


def _quality(
    values: Sequence[float], nonzero: list[float], read: _Read, spike_at: float, max_wh: float
) -> list[int] | None:
    """Per-value quality, or None when every value carries just ``read.base`` (the fast path).

    ``nonzero`` (the sorted nonzero values) gives the extremes without another pass; a NaN, which
    sorts anywhere, is caught by the sum.
    """
    limit = min(spike_at, max_wh)
    total = sum(values)
    clean = not nonzero or (nonzero[0] >= 0.0 and nonzero[-1] <= limit)
    clean = clean and total == total  # noqa: PLR0124 - NaN
    if clean and read.flags is None:
        return None
    quality = list(read.flags) if read.flags is not None else [read.base] * len(values)
    if not clean:
        for i, v in enumerate(values):
            if 0.0 <= v <= limit:
                continue
            if v < 0.0:
                quality[i] |= NEGATIVE
                continue
            if v > max_wh or v != v:  # noqa: PLR0124 - NaN is never plausible
                quality[i] |= IMPLAUSIBLE
            if v > spike_at:
                quality[i] |= SPIKE
    return quality


def _estimate(read: _Read, channel: int, values: Sequence[float], quality: list[int] | None) -> dict[int, float]:
    if quality is None:
        known = dict(zip(read.ends, values, strict=True))
    else:
        known = {t: v for t, v, q in zip(read.ends, values, quality, strict=True) if not q & UNUSABLE}
    s = read.settings
    return estimate_gaps(
        read.missing,
        known,
        read.history.get(channel, _NO_VALUES),
        interval_s=read.msg.interval_s,
        short_gap=s.short_gap_intervals,
        weeks=s.like_day_weeks,
    )


def _check_registers(
    read: _Read,
    values: Sequence[float],
    quality: list[int] | None,
    estimates: dict[int, float],
    points: list[tuple[int, float]],
    ceiling: float,
) -> list[int] | None:
    """Compare each register delta with the intervals between the two snapshots.

    A snapshot taken between interval ends (the head-end reads the registers at read time) is
    allowed the energy of the partial interval it includes: at most the first interval's value at
    the start of a span, at most ``ceiling`` (the read's plausibility limit) pro rata at its end.
    Only spans the read covers completely are judged. Estimates in a span are prorated to agree
    with the registers; a span that cannot agree has every actual value flagged REGISTER_MISMATCH.
    """
    s = read.msg.interval_s
    for (t1, r1), (t2, r2) in pairwise(points):
        f1, f2 = t1 - t1 % s, t2 - t2 % s
        lo, hi = bisect_right(read.ends, f1), bisect_right(read.ends, f2)
        gaps = [t for t in estimates if f1 < t <= f2]
        if f2 <= f1 or hi - lo + len(gaps) != (f2 - f1) // s:
            continue  # the read does not cover the span: nothing to judge
        first = values[lo] if lo < hi and read.ends[lo] == f1 + s else estimates.get(f1 + s, 0.0)
        slack = (max(0.0, first) if t1 != f1 else 0.0, (t2 - f2) / s * ceiling if t2 != f2 else 0.0)
        rest = (r2 - r1) - fsum(values[lo:hi])
        if _consistent(rest, slack, estimates, gaps, read.settings.register_tolerance_wh):
            continue
        if quality is None:
            quality = [read.base] * len(values)
        for i in range(lo, hi):
            quality[i] |= REGISTER_MISMATCH
    return quality


def _consistent(
    rest: float, slack: tuple[float, float], estimates: dict[int, float], gaps: list[int], tolerance: float
) -> bool:
    """Whether a span's register delta can agree with its intervals; prorates its estimates so they do.

    ``rest`` (register delta minus the span's actual values) equals the estimates' total, plus the
    energy between the last interval end and the second snapshot (0 to ``slack[1]``), minus the
    energy of the first interval before the first snapshot (0 to ``slack[0]``).
    """
    low, high = slack
    if not gaps:
        return -low - tolerance <= rest <= high + tolerance
    total = fsum(estimates[t] for t in gaps)
    target = min(max(total, rest - high), rest + low)
    if target < -tolerance:
        return False
    if target != total:
        prorate(estimates, gaps, target)
    return True
