"""What a simulated meter's registers see of its load: supply interruptions and bypass theft.

``SupplyLoad`` wraps a load function. While the supply is off nothing flows (import and export both
stop; the share of an interval without supply counts for nothing, so a 5-second momentary outage
barely shows). A bypass makes the meter register only ``1 - fraction`` of what it imports from the
next interval on; :meth:`SupplyLoad.true_load` is what really flowed, which a transformer's check
meter (:class:`CheckLoad`) sums over the transformer's meters.

Registers are computed interval by interval as time passes and never recomputed, so changes only
ever affect intervals that have not ended yet: the history a meter already reported stays put.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from openami.sim.meter_profile import INTERVAL_S, LoadFunction

__all__ = ["CheckLoad", "SupplyLoad"]


class SupplyLoad:
    """A load function seen through the meter's supply: outages and bypass (a ``LoadFunction``)."""

    def __init__(self, inner: LoadFunction) -> None:
        self.inner = inner
        self._outages: list[list[float]] = []  # [start, end] epoch s; end = inf while the supply is off
        self._bypass: list[tuple[int, float]] = []  # (first interval end it applies to, fraction)
        self._plain = True  # never interrupted nor bypassed: registers are the inner load (warm-up's hot path)

    @property
    def powered(self) -> bool:
        return not self._outages or self._outages[-1][1] != math.inf

    def fail(self, at: float) -> bool:
        """The supply goes off at ``at`` (epoch s); False when it already was."""
        if not self.powered:
            return False
        self._outages.append([at, math.inf])
        self._plain = False
        return True

    def restore(self, at: float) -> bool:
        """The supply comes back at ``at``; False when it was on."""
        if self.powered:
            return False
        self._outages[-1][1] = max(at, self._outages[-1][0])
        return True

    def set_bypass(self, fraction: float, at: float) -> None:
        """From the interval in progress at ``at`` on, the meter registers ``1 - fraction`` of its import."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("a bypass fraction is between 0 and 1")
        first_end = int(at) - int(at) % INTERVAL_S + INTERVAL_S
        self._bypass.append((first_end, fraction))
        self._plain = False

    @property
    def bypass_fraction(self) -> float:
        return self._bypass[-1][1] if self._bypass else 0.0

    def _supplied(self, end: int) -> float:
        """The share of the interval ending at ``end`` during which the supply was on."""
        start = end - INTERVAL_S
        dark = 0.0
        for off, on in reversed(self._outages):
            if on <= start:
                break
            dark += max(0.0, min(on, end) - max(off, start))
        return max(0.0, 1.0 - dark / INTERVAL_S)

    def true_load(self, end: int) -> tuple[int, int]:
        """(Wh imported, Wh exported) that really flowed in the interval ending at ``end``."""
        imported, exported = self.inner(end)
        if not self._outages:
            return imported, exported
        share = self._supplied(end)
        if share >= 1.0:
            return imported, exported
        return int(imported * share), int(exported * share)

    def __call__(self, end: int) -> tuple[int, int]:
        """What the meter registers: the true load, less what a bypass carries around it."""
        if self._plain:
            return self.inner(end)
        imported, exported = self.true_load(end)
        fraction = 0.0
        for first_end, value in reversed(self._bypass):
            if first_end <= end:
                fraction = value
                break
        if fraction:
            imported = int(imported * (1.0 - fraction))
        return imported, exported


class CheckLoad:
    """A transformer's check meter: the sum of the true load of the transformer's meters.

    ``by_index`` maps each member's fleet index to (serial, its supply as the check meter follows it).
    """

    def __init__(self, members: Sequence[tuple[int, str, SupplyLoad]]) -> None:
        self.by_index = {index: (serial, supply) for index, serial, supply in members}
        self._supplies = tuple(supply for _, _, supply in members)

    def __call__(self, end: int) -> tuple[int, int]:
        imported = exported = 0
        for member in self._supplies:
            wh_in, wh_out = member.true_load(end)
            imported += wh_in
            exported += wh_out
        return imported, exported
