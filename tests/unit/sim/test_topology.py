"""The synthetic grid: structure, shares, phases, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from openami.domain.meters import CustomerClass, Phase
from openami.sim.topology import build_topology


@pytest.mark.parametrize("n_meters", [5, 16, 20, 137, 1_000, 20_000])
def test_every_transformer_serves_5_to_15_meters(n_meters: int) -> None:
    topology = build_topology(n_meters, seed=7)
    per_transformer = Counter(sp.transformer_id for sp in topology.service_points)
    assert set(per_transformer) == {t.id for t in topology.transformers}
    assert all(5 <= count <= 15 for count in per_transformer.values())
    assert len(topology.service_points) == len(topology.premises) == len(topology.customer_classes) == n_meters


def test_a_fleet_smaller_than_a_transformer_still_has_one() -> None:
    topology = build_topology(3, seed=1)
    assert len(topology.transformers) == 1
    assert len(topology.service_points) == 3


@pytest.mark.parametrize("seed", [1, 2, 99])
def test_same_seed_gives_the_same_grid(seed: int) -> None:
    assert build_topology(500, seed) == build_topology(500, seed)


def test_different_seeds_give_different_grids() -> None:
    assert build_topology(500, 1) != build_topology(500, 2)


def test_references_resolve_from_service_point_to_substation() -> None:
    topology = build_topology(5_000, seed=3)
    substations = {s.id for s in topology.substations}
    feeders = {f.id: f for f in topology.feeders}
    transformers = {t.id: t for t in topology.transformers}
    premises = {p.id for p in topology.premises}
    assert all(f.substation_id in substations for f in feeders.values())
    assert all(t.feeder_id in feeders for t in transformers.values())
    assert all(sp.transformer_id in transformers and sp.premise_id in premises for sp in topology.service_points)
    assert len({sp.id for sp in topology.service_points}) == 5_000


def test_shares_of_commercial_and_critical_care() -> None:
    topology = build_topology(20_000, seed=5)
    commercial = sum(c is CustomerClass.COMMERCIAL for c in topology.customer_classes) / 20_000
    critical = sum(p.critical_care for p in topology.premises) / 20_000
    assert 0.10 <= commercial <= 0.20
    assert 0.005 <= critical <= 0.015
    by_premise = dict(zip((sp.premise_id for sp in topology.service_points), topology.customer_classes, strict=True))
    assert all(by_premise[p.id] is CustomerClass.RESIDENTIAL for p in topology.premises if p.critical_care)


def test_phases_commercial_three_phase_residential_single_phase() -> None:
    topology = build_topology(2_000, seed=11)
    transformers = {t.id: t for t in topology.transformers}
    for sp, customer_class in zip(topology.service_points, topology.customer_classes, strict=True):
        transformer = transformers[sp.transformer_id]
        if customer_class is CustomerClass.COMMERCIAL:
            assert sp.phase is Phase.ABC
            assert transformer.phase is Phase.ABC
        else:
            assert sp.phase in (Phase.A, Phase.B, Phase.C)
            assert transformer.phase in (Phase.ABC, sp.phase)
    single = Counter(t.phase for t in topology.transformers if t.phase is not Phase.ABC)
    assert max(single.values()) - min(single.values()) <= len(topology.feeders) * 2


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="n_meters"):
        build_topology(-1)
