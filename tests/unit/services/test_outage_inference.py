"""Locating the failed device from partial last gasps on synthetic grids (services.outage_inference)."""

from __future__ import annotations

import math
import random

from openami.domain.outages import DeviceKind
from openami.services.outage_inference import (
    Device,
    Grid,
    InferenceParameters,
    Suspect,
    _Best,
    _failed_score,
    infer,
)

# 2 substations x 3 feeders x 10 transformers x 10 meters = 600 meters; meter ids 1..600
SUBSTATIONS, FEEDERS, TRANSFORMERS, METERS = 2, 3, 10, 10


def _grid() -> Grid:
    meter_transformer: dict[int, str] = {}
    transformer_feeder: dict[str, str] = {}
    feeder_substation: dict[str, str] = {}
    meter = 0
    for s in range(SUBSTATIONS):
        for f in range(FEEDERS):
            feeder = f"S{s}-F{f}"
            feeder_substation[feeder] = f"S{s}"
            for x in range(TRANSFORMERS):
                transformer = f"{feeder}-T{x}"
                transformer_feeder[transformer] = feeder
                for _ in range(METERS):
                    meter += 1
                    meter_transformer[meter] = transformer
    return Grid(meter_transformer, transformer_feeder, feeder_substation)


def _sample(meters: tuple[int, ...], share: float, seed: int) -> set[int]:
    rng = random.Random(seed)
    return {m for m in meters if rng.random() < share}


def _located(suspects: list[Suspect]) -> set[tuple[str, str]]:
    return {(str(s.kind), s.id) for s in suspects}


def test_a_feeder_fault_with_30_percent_of_last_gasps_is_located_on_the_feeder() -> None:
    grid = _grid()
    for seed in range(20):  # many draws of which 30 % arrive: every one must point at the feeder
        gasps = _sample(grid.meters((DeviceKind.FEEDER, "S1-F2")), 0.3, seed)
        assert _located(infer(grid, gasps, set())) == {("feeder", "S1-F2")}, seed


def test_a_transformer_fault_with_30_percent_of_last_gasps_is_located_on_the_transformer() -> None:
    grid = _grid()
    meters = grid.meters((DeviceKind.TRANSFORMER, "S0-F1-T4"))
    gasps = set(meters[:3])  # 3 of its 10 meters
    assert _located(infer(grid, gasps, set())) == {("transformer", "S0-F1-T4")}


def test_a_whole_substation_is_located_when_its_feeders_all_gasp() -> None:
    grid = _grid()
    gasps = _sample(grid.meters((DeviceKind.SUBSTATION, "S0")), 0.35, 7)
    assert _located(infer(grid, gasps, set())) == {("substation", "S0")}


def test_two_transformers_on_different_feeders_are_two_outages() -> None:
    grid = _grid()
    one = grid.meters((DeviceKind.TRANSFORMER, "S0-F0-T1"))
    two = grid.meters((DeviceKind.TRANSFORMER, "S1-F2-T8"))
    gasps = set(one[:5]) | set(two[2:6])
    assert _located(infer(grid, gasps, set())) == {("transformer", "S0-F0-T1"), ("transformer", "S1-F2-T8")}


def test_one_last_gasp_alone_is_that_meter_not_its_transformer() -> None:
    grid = _grid()
    assert _located(infer(grid, {42}, set())) == {("meter", "42")}


def test_a_ping_answered_inside_rules_the_device_out() -> None:
    grid = _grid()
    meters = grid.meters((DeviceKind.TRANSFORMER, "S0-F1-T4"))
    suspects = infer(grid, set(meters[:3]), set(meters[3:]))  # the others answered their ping
    assert _located(suspects) == {("meter", str(m)) for m in meters[:3]}


def test_meters_dark_in_an_open_transformer_outage_need_no_new_device_but_count_for_the_feeder() -> None:
    grid = _grid()
    transformer = grid.meters((DeviceKind.TRANSFORMER, "S0-F0-T0"))
    assert infer(grid, set(transformer), set(), explained=set(transformer)) == []
    feeder = grid.meters((DeviceKind.FEEDER, "S0-F0"))
    gasps = set(transformer) | _sample(feeder, 0.3, 3)
    assert _located(infer(grid, gasps, set(), explained=set(transformer))) == {("feeder", "S0-F0")}


def test_verification_within_an_outage_finds_the_transformer_still_dark() -> None:
    grid = _grid()
    feeder = grid.meters((DeviceKind.FEEDER, "S0-F2"))
    still = set(grid.meters((DeviceKind.TRANSFORMER, "S0-F2-T5")))
    back = set(feeder) - still
    suspects = infer(grid, still, back, within=(DeviceKind.FEEDER, "S0-F2"))
    assert _located(suspects) == {("transformer", "S0-F2-T5")}


def test_nothing_dark_is_nothing_located() -> None:
    assert infer(_grid(), set(), set()) == []


def _reference(grid: Grid, device: Device, dark: set[int], alive: set[int], explained: set[int]) -> _Best:
    """The pass as its definition reads: each device counts its own meters (what ``infer`` does by
    counting the observations once, walking up from each)."""
    params = InferenceParameters()
    meters = grid.meters(device)
    seen_dark = sum(1 for m in meters if m in dark and m not in alive)
    if not any(m in dark and m not in alive and m not in explained for m in meters):
        return _Best(0.0, ())
    if device[0] == DeviceKind.TRANSFORMER:
        parts = [_reference_meter(m, dark, alive, explained) for m in meters]
    else:  # a meter (``within`` one) has no children
        parts = [_reference(grid, kid, dark, alive, explained) for kid in grid.children.get(device, [])]
    children = _Best(sum(p.score for p in parts), tuple(s for p in parts for s in p.devices))
    if any(m in alive for m in meters):
        return children
    own = _failed_score(len(meters), seen_dark, params)
    if own > children.score or (own == children.score and device[0] == DeviceKind.TRANSFORMER):
        return _Best(own, (Suspect(device[0], device[1], len(meters), seen_dark, own),))
    return children


def _reference_meter(meter: int, dark: set[int], alive: set[int], explained: set[int]) -> _Best:
    params = InferenceParameters()
    if meter not in dark or meter in alive or meter in explained:
        return _Best(0.0, ())
    own = math.log(params.device_prior)
    if own >= math.log(params.spurious):
        return _Best(own, (Suspect(DeviceKind.METER, str(meter), 1, 1, own),))
    return _Best(math.log(params.spurious), ())


def _random_grid(rng: random.Random) -> Grid:
    """An uneven grid: transformers of 1-12 meters, feeders of 1-6, some without a feeder or substation."""
    meter_transformer: dict[int, str] = {}
    transformer_feeder: dict[str, str] = {}
    feeder_substation: dict[str, str] = {}
    meter = 0
    for s in range(rng.randint(1, 3)):
        for f in range(rng.randint(1, 4)):
            feeder = f"S{s}-F{f}"
            if rng.random() < 0.9:
                feeder_substation[feeder] = f"S{s}"
            for x in range(rng.randint(1, 6)):
                transformer = f"{feeder}-T{x}"
                if rng.random() < 0.95:
                    transformer_feeder[transformer] = feeder
                for _ in range(rng.randint(1, 12)):
                    meter += 1
                    meter_transformer[meter] = transformer
    return Grid(meter_transformer, transformer_feeder, feeder_substation)


def test_the_pass_finds_what_its_definition_finds_on_random_grids_and_observations() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        grid = _random_grid(rng)
        meters = sorted(grid.meter_transformer)
        devices = sorted(grid.meters_below)
        failed = rng.sample(devices, min(len(devices), rng.randint(0, 3)))
        down = {m for device in failed for m in grid.meters(device)}
        share = rng.choice((0.3, 0.6, 1.0))
        dark = {m for m in down if rng.random() < share} | set(rng.sample(meters, min(len(meters), 2)))
        dark.add(10_000 + seed)  # a meter the grid does not know: no device explains it
        pinged = rng.sample(meters, min(len(meters), rng.randint(0, 5)))
        alive = {m for m in pinged if m not in down or rng.random() < 0.2}
        explained = {m for m in dark if rng.random() < 0.15}
        roots = [d for d in grid.children if d[0] == DeviceKind.SUBSTATION]
        roots += [d for d in grid.meters_below if d[0] == DeviceKind.TRANSFORMER and grid.parent(d) is None]
        expected = [s for root in roots for s in _reference(grid, root, dark, alive, explained).devices]
        assert infer(grid, dark, alive, explained=explained) == expected, seed
        within = rng.choice([*sorted(grid.meters_below), (DeviceKind.METER, str(meters[0]))])
        expected = list(_reference(grid, within, dark, alive, explained).devices)
        assert infer(grid, dark, alive, explained=explained, within=within) == expected, seed
