"""Which device failed, from partial last gasps: a likelihood comparison over the grid tree (pure, no I/O).

Observations per meter: *dark* (it sent a last gasp, did not answer a ping, or is already in an open
outage) or *alive* (it answered a ping or reported power back); most meters are unobserved.

Hypotheses: a set of failed devices (substations, feeders, transformers, single meters). When a
device fails, every meter below it is dark and each dark meter's last gasp arrives with probability
``p`` (unknown, at least ``min_delivery``: seed 004 says more than 30 % arrive); a meter not below a
failed device sends a (spurious) gasp with probability ``spurious``. Each failed device costs
``log(device_prior)``, so that one feeder explains 30 gasps spread over its transformers better than
ten transformers failing at once, while 3 gasps out of one transformer's 10 meters point at that
transformer and not at its feeder's 400 meters.

The score of "device D failed" is the log-likelihood of its meters' observations with ``p`` at its
maximum-likelihood value ``k/n`` (clamped to ``[min_delivery, 1]``) plus the prior; an alive meter
below D rules D out. Because the hypotheses nest along the tree, the best set is found exactly by one
bottom-up pass: each node keeps the better of "I failed" and "the best explanations of my children"
(on a tie, the smaller device: a feeder rather than a substation that has only that feeder). Meters
already in an open outage count as dark but need no new explanation. The pings that confirm a
suspicion (``services.outage``) add alive/dark observations and the pass runs again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from openami.domain.outages import DeviceKind

__all__ = ["Grid", "InferenceParameters", "Suspect", "infer"]

_LEVELS = (DeviceKind.SUBSTATION, DeviceKind.FEEDER, DeviceKind.TRANSFORMER)
Device = tuple[DeviceKind, str]


@dataclass(frozen=True, slots=True)
class InferenceParameters:
    min_delivery: float = 0.3  # the least share of last gasps assumed to arrive
    spurious: float = 1e-4  # chance that a powered meter sends a last gasp anyway
    device_prior: float = 1e-3  # prior odds of one more failed device


@dataclass(frozen=True, slots=True)
class Suspect:
    """A device inferred to have failed; ``dark`` of its ``size`` meters were observed dark."""

    kind: DeviceKind
    id: str
    size: int
    dark: int
    score: float


@dataclass(slots=True)
class Grid:
    """The grid tree as the engine keeps it: meter → transformer → feeder → substation."""

    meter_transformer: dict[int, str]
    transformer_feeder: dict[str, str]
    feeder_substation: dict[str, str]
    children: dict[Device, list[Device]] = field(init=False)
    meters_below: dict[Device, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.children = {}
        below: dict[Device, list[int]] = {}
        for meter, transformer in sorted(self.meter_transformer.items()):
            below.setdefault((DeviceKind.TRANSFORMER, transformer), []).append(meter)
        for transformer, feeder in sorted(self.transformer_feeder.items()):
            self.children.setdefault((DeviceKind.FEEDER, feeder), []).append((DeviceKind.TRANSFORMER, transformer))
        for feeder, substation in sorted(self.feeder_substation.items()):
            self.children.setdefault((DeviceKind.SUBSTATION, substation), []).append((DeviceKind.FEEDER, feeder))
        for level in (DeviceKind.FEEDER, DeviceKind.SUBSTATION):
            for device, kids in self.children.items():
                if device[0] == level:
                    below[device] = [m for kid in kids for m in below.get(kid, [])]
        self.meters_below = {device: tuple(meters) for device, meters in below.items()}

    def meters(self, device: Device) -> tuple[int, ...]:
        if device[0] == DeviceKind.METER:
            return (int(device[1]),)
        return self.meters_below.get(device, ())

    def parent(self, device: Device) -> Device | None:
        kind, ident = device
        if kind == DeviceKind.METER:
            transformer = self.meter_transformer.get(int(ident))
            return None if transformer is None else (DeviceKind.TRANSFORMER, transformer)
        if kind == DeviceKind.TRANSFORMER:
            feeder = self.transformer_feeder.get(ident)
            return None if feeder is None else (DeviceKind.FEEDER, feeder)
        if kind == DeviceKind.FEEDER:
            substation = self.feeder_substation.get(ident)
            return None if substation is None else (DeviceKind.SUBSTATION, substation)
        return None

    def ancestors(self, device: Device) -> Iterable[Device]:
        parent = self.parent(device)
        while parent is not None:
            yield parent
            parent = self.parent(parent)

    def area(self, device: Device) -> str | None:
        """The substation a device (or meter) belongs to."""
        if device[0] == DeviceKind.SUBSTATION:
            return device[1]
        return next((a[1] for a in self.ancestors(device) if a[0] == DeviceKind.SUBSTATION), None)


def _failed_score(size: int, dark: int, params: InferenceParameters) -> float:
    """Log-likelihood that a device with ``size`` meters, ``dark`` of them seen dark, failed (plus its prior)."""
    p = min(1.0, max(params.min_delivery, dark / size))
    score = math.log(params.device_prior)
    if dark:
        score += dark * math.log(p)
    if size > dark:
        score += (size - dark) * math.log(1.0 - p) if p < 1.0 else -math.inf
    return score


@dataclass(frozen=True, slots=True)
class _Best:
    score: float
    devices: tuple[Suspect, ...]


def infer(
    grid: Grid,
    dark: set[int],
    alive: set[int],
    *,
    explained: set[int] | None = None,
    params: InferenceParameters | None = None,
    within: Device | None = None,
) -> list[Suspect]:
    """The most likely set of failed devices given the observations (empty when nothing is dark).

    ``explained``: dark meters already in an open outage (dark, but no new device needed for them).
    ``within``: look only below this device (restoration verification of one outage).
    """
    params = params or InferenceParameters()
    explained = explained or set()
    roots = [within] if within is not None else [d for d in grid.children if d[0] == DeviceKind.SUBSTATION]
    if within is None:  # transformers whose feeder is unknown still count
        roots += [d for d in grid.meters_below if d[0] == DeviceKind.TRANSFORMER and grid.parent(d) is None]
    suspects: list[Suspect] = []
    for root in roots:
        suspects.extend(_best(grid, root, dark, alive, explained, params).devices)
    return suspects


def _meter_best(meter: int, dark: set[int], alive: set[int], explained: set[int], params: InferenceParameters) -> _Best:
    if meter not in dark or meter in alive or meter in explained:
        return _Best(0.0, ())
    own = math.log(params.device_prior)  # this meter's own supply failed (it was seen dark, so p = 1)
    if own >= math.log(params.spurious):
        return _Best(own, (Suspect(DeviceKind.METER, str(meter), 1, 1, own),))
    return _Best(math.log(params.spurious), ())


def _best(
    grid: Grid, device: Device, dark: set[int], alive: set[int], explained: set[int], params: InferenceParameters
) -> _Best:
    """The best explanation of the observations below ``device`` (the bottom-up pass, recursively)."""
    meters = grid.meters(device)
    seen_dark = sum(1 for m in meters if m in dark and m not in alive)
    new_dark = sum(1 for m in meters if m in dark and m not in alive and m not in explained)
    if new_dark == 0:
        return _Best(0.0, ())
    if device[0] == DeviceKind.TRANSFORMER:
        parts = [_meter_best(m, dark, alive, explained, params) for m in meters]
    else:
        parts = [_best(grid, kid, dark, alive, explained, params) for kid in grid.children.get(device, [])]
    children = _Best(sum(p.score for p in parts), tuple(s for p in parts for s in p.devices))
    if any(m in alive for m in meters) or not meters:
        return children
    own = _failed_score(len(meters), seen_dark, params)
    # a tie means the children explain exactly the same meters (a substation with one feeder): name the
    # smaller device, except that a transformer is named rather than its only meter
    if own > children.score or (own == children.score and device[0] == DeviceKind.TRANSFORMER):
        return _Best(own, (Suspect(device[0], device[1], len(meters), seen_dark, own),))
    return children
