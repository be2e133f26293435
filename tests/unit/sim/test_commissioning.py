"""Building a fleet and its commissioning file: determinism, addresses, faults, keys, the contract."""

from __future__ import annotations

import copy
import json
import stat
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from openami.sim.commissioning import (
    commissioning_document,
    read_commissioning,
    validate_commissioning,
    write_commissioning,
)
from openami.sim.fleet import FaultKind, FleetConfig, SimMeter, address_of, build_fleet


def test_same_config_gives_the_same_fleet_with_the_same_keys() -> None:
    assert build_fleet(FleetConfig(meters=300, seed=4)) == build_fleet(FleetConfig(meters=300, seed=4))


def test_another_seed_gives_other_keys_and_titles() -> None:
    a, b = build_fleet(FleetConfig(meters=50, seed=1)), build_fleet(FleetConfig(meters=50, seed=2))
    assert {m.guek for m in a.meters}.isdisjoint(m.guek for m in b.meters)
    assert {m.system_title for m in a.meters}.isdisjoint(m.system_title for m in b.meters)


def test_random_keys_come_from_the_csprng_and_differ_per_build() -> None:
    config = FleetConfig(meters=5, seed=1, random_keys=True)
    first, second = build_fleet(config), build_fleet(config)
    assert [m.guek for m in first.meters] != [m.guek for m in second.meters]
    assert [m.system_title for m in first.meters] == [m.system_title for m in second.meters]


def test_keys_titles_and_addresses_are_unique() -> None:
    fleet = build_fleet(FleetConfig(meters=3_000, seed=9))
    assert len({m.guek for m in fleet.meters}) == len({m.gak for m in fleet.meters}) == 3_000
    assert len({m.system_title for m in fleet.meters}) == 3_000
    assert all(len(m.system_title) == 8 and m.system_title.startswith(b"OAM") for m in fleet.meters)
    assert len({(m.host, m.port) for m in fleet.meters}) == 3_000


def test_addresses_walk_127_0_1_1_upward_and_skip_0_and_255() -> None:
    config = FleetConfig(meters=1_000)
    assert address_of(0, config) == ("127.0.1.1", 4059)
    assert address_of(253, config) == ("127.0.1.254", 4059)
    assert address_of(254, config) == ("127.0.2.1", 4059)
    assert address_of(254 * 255, config) == ("127.1.0.1", 4059)
    single = FleetConfig(meters=10, single_address=True, port=20_000)
    assert address_of(3, single) == ("127.0.0.1", 20_003)


def test_keys_are_not_in_the_repr() -> None:
    meter = build_fleet(FleetConfig(meters=1)).meters[0]
    assert meter.guek.hex() not in repr(meter)
    assert meter.gak.hex() not in repr(meter)


@pytest.mark.parametrize("n_meters", [100, 1_000, 10_000])
def test_two_to_five_percent_are_flaky_and_some_clocks_drift(n_meters: int) -> None:
    fleet = build_fleet(FleetConfig(meters=n_meters, seed=3))
    assert 0.02 <= len(fleet.flaky) / n_meters <= 0.05
    assert Counter(m.fault for m in fleet.flaky).keys() == set(FaultKind)
    assert fleet.drifting
    assert all(30 <= abs(m.clock_offset_s) <= 900 and m.fault is None for m in fleet.drifting)
    assert all(0.5 <= m.delay_s <= 2.0 for m in fleet.flaky if m.fault is FaultKind.SLOW)
    assert all(m.drop_after >= 1 for m in fleet.flaky if m.fault is FaultKind.DROP)


def test_a_small_fleet_still_has_a_flaky_and_a_drifting_meter() -> None:
    fleet = build_fleet(FleetConfig(meters=20))
    assert len(fleet.flaky) == 1
    assert len(fleet.drifting) == 1


def test_partitions_respect_the_per_process_cap() -> None:
    fleet = build_fleet(FleetConfig(meters=12_001, max_meters_per_process=5_000))
    parts = fleet.partitions()
    assert [len(p) for p in parts] == [4_001, 4_000, 4_000]
    assert [m for p in parts for m in p] == list(fleet.meters)
    assert len(fleet.partitions(2)) == 2


def test_meter_survives_the_trip_to_a_worker() -> None:
    for meter in build_fleet(FleetConfig(meters=40, flaky_fraction=0.2)).meters:
        assert SimMeter.from_json(json.loads(json.dumps(meter.to_json()))) == meter


def test_commissioning_file_is_the_contract_shape_and_0600(tmp_path: Path) -> None:
    fleet = build_fleet(FleetConfig(meters=120, seed=5))
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    path = write_commissioning(tmp_path / "sub" / "commissioning.json", commissioning_document(fleet, when))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = read_commissioning(path)
    assert document["format"] == "openami-commissioning"
    assert document["version"] == 1
    assert document["generated_at"] == "2025-01-02T03:04:05Z"
    assert document["seed"] == 5
    meter = document["meters"][0]
    assert meter == {
        "serial": "OAM00000001", "kind": "electric", "customer_class": fleet.meters[0].customer_class.value,
        "host": "127.0.1.1", "port": 4059, "system_title": fleet.meters[0].system_title.hex(),
        "model": "openami-sim-e1", "firmware": "1.0.0", "service_point_id": "SP000001",
        "keys": {"guek": fleet.meters[0].guek.hex(), "gak": fleet.meters[0].gak.hex(),
                 "kek": fleet.meters[0].kek.hex()},
    }  # fmt: skip
    assert len(document["meters"]) == len(document["service_points"]) == len(document["premises"]) == 120
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary left behind


def test_rewriting_replaces_the_file_and_keeps_it_0600(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    target.write_text("old")
    target.chmod(0o644)
    write_commissioning(target, commissioning_document(build_fleet(FleetConfig(meters=3))))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["format"] == "openami-commissioning"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("format",), "other", "not an openami-commissioning"),
        (("meters", 0, "system_title"), "XYZ", "system_title"),
        (("meters", 0, "keys", "guek"), "00", "keys must be"),
        (("meters", 0, "keys", "kek"), "zz" * 16, "keys must be"),
        (("meters", 0, "keys", "broadcast"), "00" * 16, "keys must be"),
        (("meters", 0, "service_point_id"), "SP-nowhere", "unknown service_points"),
        (("feeders", 0, "substation_id"), "SS-nowhere", "unknown substations"),
        (("transformers", 0, "extra"), 1, "exactly the keys"),
    ],
)
def test_validation_names_the_problem_without_echoing_keys(path: tuple, value: object, message: str) -> None:
    document = commissioning_document(build_fleet(FleetConfig(meters=12)))
    broken = copy.deepcopy(document)
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    validate_commissioning(document)
    with pytest.raises(ValueError, match=message) as caught:
        validate_commissioning(broken)
    assert document["meters"][0]["keys"]["gak"] not in str(caught.value)


def test_every_meter_has_its_own_master_key_and_files_without_one_stay_valid() -> None:
    fleet = build_fleet(FleetConfig(meters=20, seed=3))
    keks = {m.kek for m in fleet.meters}
    assert len(keks) == 20
    assert not keks & ({m.guek for m in fleet.meters} | {m.gak for m in fleet.meters})
    assert build_fleet(FleetConfig(meters=20, seed=3)).meters[5].kek == fleet.meters[5].kek  # deterministic
    assert "kek" not in repr(fleet.meters[0]) or fleet.meters[0].kek.hex() not in repr(fleet.meters[0])
    document = commissioning_document(fleet)
    for meter in document["meters"]:  # a file written before key transfer existed
        del meter["keys"]["kek"]
    validate_commissioning(document)
