"""Estimation of missing intervals: interpolation, like-day profile, the meter's average shape.

Pure functions over epoch-second interval ends and Wh values of one channel of one meter. They are
only called for reads that have gaps, so clarity wins over speed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import fsum

WEEK_S = 7 * 86_400
DAY_S = 86_400


def gap_runs(missing: Sequence[int], interval_s: int) -> list[tuple[int, ...]]:
    """Split ascending missing interval ends into runs of consecutive intervals."""
    runs: list[tuple[int, ...]] = []
    run: list[int] = []
    for end in missing:
        if run and end - run[-1] != interval_s:
            runs.append(tuple(run))
            run = []
        run.append(end)
    if run:
        runs.append(tuple(run))
    return runs


def interpolate(left: float, right: float, count: int) -> list[float]:
    """``count`` values on the straight line between two neighbouring interval values, never below 0."""
    step = (right - left) / (count + 1)
    return [max(0.0, left + step * k) for k in range(1, count + 1)]


def like_day(end: int, history: Mapping[int, float], weeks: int) -> float | None:
    """Mean of the same weekday and time of day over the last ``weeks`` weeks, or None if none is known."""
    found = [v for k in range(1, weeks + 1) if (v := history.get(end - k * WEEK_S)) is not None]
    return fsum(found) / len(found) if found else None


@dataclass(frozen=True, slots=True)
class AverageShape:
    """The meter's mean value per time-of-day slot, with the overall mean as the last resort."""

    slots: dict[int, float]
    overall: float | None

    @classmethod
    def of(cls, known: Iterable[tuple[int, float]]) -> AverageShape:
        sums: dict[int, float] = {}
        counts: dict[int, int] = {}
        total = 0.0
        n = 0
        for end, value in known:
            slot = end % DAY_S
            sums[slot] = sums.get(slot, 0.0) + value
            counts[slot] = counts.get(slot, 0) + 1
            total += value
            n += 1
        return cls({slot: sums[slot] / counts[slot] for slot in sums}, total / n if n else None)

    def at(self, end: int) -> float | None:
        value = self.slots.get(end % DAY_S)
        return self.overall if value is None else value


def estimate_gaps(
    missing: Sequence[int],
    known: Mapping[int, float],
    history: Mapping[int, float],
    *,
    interval_s: int,
    short_gap: int,
    weeks: int,
) -> dict[int, float]:
    """Estimates for ``missing`` interval ends of one channel.

    ``known`` holds this read's usable actual values, ``history`` earlier usable actual values of
    the same meter and channel (both by interval end). A run of at most ``short_gap`` intervals with
    a known value on both sides is interpolated; anything else takes the like-day value, else the
    meter's average shape for that time of day, else its overall mean. A gap with nothing known at
    all gets no estimate.
    """
    estimates: dict[int, float] = {}
    shape: AverageShape | None = None
    for run in gap_runs(missing, interval_s):
        left = _known_at(run[0] - interval_s, known, history)
        right = _known_at(run[-1] + interval_s, known, history)
        if len(run) <= short_gap and left is not None and right is not None:
            estimates.update(zip(run, interpolate(left, right, len(run)), strict=True))
            continue
        for end in run:
            value = like_day(end, history, weeks)
            if value is None:
                if shape is None:
                    shape = AverageShape.of([*known.items(), *history.items()])
                value = shape.at(end)
            if value is not None:
                estimates[end] = max(0.0, value)
    return estimates


def _known_at(end: int, known: Mapping[int, float], history: Mapping[int, float]) -> float | None:
    value = known.get(end)
    return history.get(end) if value is None else value


def prorate(estimates: dict[int, float], ends: Sequence[int], energy_wh: float) -> None:
    """Scale the estimates at ``ends`` so that they add up to ``energy_wh`` (a register's testimony).

    Keeps their shape when they carry energy, spreads evenly when they are all zero.
    """
    total = fsum(estimates[e] for e in ends)
    energy_wh = max(0.0, energy_wh)
    if total > 0.0:
        factor = energy_wh / total
        for e in ends:
            estimates[e] *= factor
    else:
        each = energy_wh / len(ends)
        for e in ends:
            estimates[e] = each
