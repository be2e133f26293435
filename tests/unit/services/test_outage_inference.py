"""Locating the failed device from partial last gasps on synthetic grids (services.outage_inference)."""

from __future__ import annotations

import random

from openami.domain.outages import DeviceKind
from openami.services.outage_inference import Grid, Suspect, infer

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
