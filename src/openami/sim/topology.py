"""A deterministic synthetic distribution grid: substations, feeders, transformers, premises, service points.

Built from (number of meters, seed) alone: the same pair always gives the same grid. Each transformer
serves 5 to 15 service points (when there are at least 5 meters), each feeder 20 to 60
transformers, each substation 3 to 8 feeders. About 15 % of the premises are commercial (three-phase
service, on three-phase transformers), about 1 % of the residential premises have a critical-care
flag (life-support equipment: never disconnected remotely without a visit).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from openami.domain.meters import CustomerClass, Feeder, Phase, Premise, ServicePoint, Substation, Transformer

__all__ = [
    "COMMERCIAL_SHARE",
    "CRITICAL_CARE_SHARE",
    "METERS_PER_TRANSFORMER",
    "Topology",
    "build_topology",
]

METERS_PER_TRANSFORMER = (5, 15)
TRANSFORMERS_PER_FEEDER = (20, 60)
FEEDERS_PER_SUBSTATION = (3, 8)
COMMERCIAL_SHARE = 0.15
CRITICAL_CARE_SHARE = 0.01

_SINGLE_PHASES = (Phase.A, Phase.B, Phase.C)
_STREETS = (
    "Oak", "Elm", "Maple", "Birch", "Cedar", "Willow", "Ash", "Linden", "Chestnut", "Poplar",
    "Rowan", "Hazel", "Alder", "Beech", "Holly", "Juniper", "Laurel", "Magnolia", "Spruce", "Sycamore",
)  # fmt: skip
_STREET_KINDS = ("Street", "Road", "Lane", "Avenue", "Close", "Way")
_TOWNS = (
    "Northfield", "Southbrook", "Eastwick", "Westmere", "Riverton", "Hillcrest", "Lakeside", "Fairview",
    "Greenford", "Stonebridge", "Millbrook", "Ashby",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Topology:
    """The grid, in commissioning order; ``customer_classes[i]`` belongs to ``service_points[i]``."""

    seed: int
    substations: tuple[Substation, ...]
    feeders: tuple[Feeder, ...]
    transformers: tuple[Transformer, ...]
    premises: tuple[Premise, ...]
    service_points: tuple[ServicePoint, ...]
    customer_classes: tuple[CustomerClass, ...]


def _partition(total: int, low: int, high: int, rng: random.Random) -> list[int]:
    """Random group sizes in [low, high] summing to ``total`` (one smaller group if total < low)."""
    sizes: list[int] = []
    remaining = total
    while remaining > high:
        size = rng.randint(low, min(high, remaining - low))
        sizes.append(size)
        remaining -= size
    if remaining:
        sizes.append(remaining)
    return sizes


def _classes(per_transformer: list[int], rng: random.Random) -> list[CustomerClass]:
    """Customer class per meter: whole transformers go commercial (shopping streets, business parks)
    until the share is reached; the remainder, smaller than any transformer left, shares a residential one."""
    target = round(sum(per_transformer) * COMMERCIAL_SHARE)
    starts = [0, *itertools.accumulate(per_transformer)]
    order = list(range(len(per_transformer)))
    rng.shuffle(order)
    classes = [CustomerClass.RESIDENTIAL] * starts[-1]
    count, passed = 0, []
    for t in order:
        if count + per_transformer[t] <= target:
            classes[starts[t] : starts[t + 1]] = [CustomerClass.COMMERCIAL] * per_transformer[t]
            count += per_transformer[t]
        else:
            passed.append(t)
    if count < target and passed:  # every passed transformer is larger than what is left
        classes[starts[passed[0]] : starts[passed[0]] + target - count] = [CustomerClass.COMMERCIAL] * (target - count)
    return classes


def _critical_care(classes: list[CustomerClass], rng: random.Random) -> set[int]:
    """Indices of the critical-care premises: about 1 % of the residential ones (at least one from 50 meters)."""
    residential = [i for i, c in enumerate(classes) if c is CustomerClass.RESIDENTIAL]
    wanted = max(1 if len(classes) >= 50 else 0, round(len(residential) * CRITICAL_CARE_SHARE))
    return set(rng.sample(residential, min(len(residential), wanted)))


def _address(rng: random.Random) -> str:
    street = f"{rng.choice(_STREETS)} {rng.choice(_STREET_KINDS)}"
    return f"{rng.randint(1, 250)} {street}, {rng.choice(_TOWNS)}"


def build_topology(n_meters: int, seed: int = 1) -> Topology:
    """The grid for ``n_meters`` service points (one meter each), deterministic for ``seed``."""
    if n_meters < 0:
        raise ValueError("n_meters must be >= 0")
    rng = random.Random(f"openami-topology-{seed}")  # noqa: S311 - a reproducible grid, not a secret
    per_transformer = _partition(n_meters, *METERS_PER_TRANSFORMER, rng)
    classes = _classes(per_transformer, rng)
    critical = _critical_care(classes, rng)
    per_feeder = _partition(len(per_transformer), *TRANSFORMERS_PER_FEEDER, rng)
    per_substation = _partition(len(per_feeder), *FEEDERS_PER_SUBSTATION, rng)
    substations = [
        Substation(f"SS{s + 1:02d}", f"{rng.choice(_TOWNS)} {s + 1} substation") for s in range(len(per_substation))
    ]
    feeders: list[Feeder] = []
    for substation, count in zip(substations, per_substation, strict=True):
        feeders += [Feeder(f"{substation.id}-F{f + 1:02d}", substation.id) for f in range(count)]
    transformers: list[Transformer] = []
    premises: list[Premise] = []
    service_points: list[ServicePoint] = []
    meter = 0
    transformer_sizes = iter(per_transformer)
    for feeder, count in zip(feeders, per_feeder, strict=True):
        for t in range(count):
            size = next(transformer_sizes)
            members = range(meter, meter + size)
            three_phase = any(classes[i] is CustomerClass.COMMERCIAL for i in members)
            phase = Phase.ABC if three_phase else _SINGLE_PHASES[t % 3]  # rotate to balance the feeder
            transformer = Transformer(f"{feeder.id}-T{t + 1:03d}", feeder.id, phase)
            transformers.append(transformer)
            for k, i in enumerate(members):
                premises.append(Premise(f"P{i + 1:06d}", _address(rng), i in critical))
                sp_phase = _service_phase(transformer.phase, classes[i], k)
                service_points.append(ServicePoint(f"SP{i + 1:06d}", f"P{i + 1:06d}", transformer.id, sp_phase))
            meter += size
    return Topology(
        seed, tuple(substations), tuple(feeders), tuple(transformers), tuple(premises), tuple(service_points),
        tuple(classes),
    )  # fmt: skip


def _service_phase(transformer_phase: Phase, customer_class: CustomerClass, k: int) -> Phase:
    """Commercial services are three-phase; residential ones take one phase, rotated on a 3-phase transformer."""
    if customer_class is CustomerClass.COMMERCIAL:
        return Phase.ABC
    if transformer_phase is Phase.ABC:
        return _SINGLE_PHASES[k % 3]
    return transformer_phase
