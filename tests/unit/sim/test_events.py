"""The simulator's event side without sockets: event log, Push Setup, supply model, scenarios, check meters."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from openami.domain.meter_events import EventCode
from openami.protocols.dlms import obis
from openami.protocols.dlms.axdr import Enum, Float64, LongUnsigned, Structure, Unsigned
from openami.protocols.dlms.cosem import CosemAccessError, PushSetup, Result
from openami.protocols.dlms.cosem.profile import parse_time
from openami.protocols.dlms.cosem.push_setup import TransportService, parse_destination
from openami.protocols.dlms.errors import DlmsError
from openami.sim import control
from openami.sim.commissioning import commissioning_document, validate_commissioning
from openami.sim.events import EventLog, PushChannel
from openami.sim.fleet import FleetConfig, build_fleet
from openami.sim.meter import MeterConfig, SimulatedMeter
from openami.sim.meter_profile import INTERVAL_S
from openami.sim.scenarios import chosen, last_gasp_chosen, meters_of
from openami.sim.supply import CheckLoad, SupplyLoad

NOW = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)
T0 = int(NOW.timestamp())


def _flat(end: int) -> tuple[int, int]:
    return 900, 90


def _meter(now: datetime = NOW) -> SimulatedMeter:
    return SimulatedMeter(
        MeterConfig("OAM00000001", b"OAM\x00\x00\x00\x00\x01", bytes(16), bytes(range(16)), profile_days=1),
        now=lambda: now,
    )


# ------------------------------------------------------------------------------------------ event log


def test_event_log_keeps_the_last_thousand_events_oldest_first() -> None:
    log = EventLog()
    for k in range(1_005):
        log.append(T0 + k, 40, None)
    assert len(log.entries) == 1_000
    assert log.entries[0] == (T0 + 5, 40, None)
    profile = log.objects()[0]
    assert profile.source.entries_in_use() == 1_000


def test_event_log_rows_are_clock_code_value_and_selectable_by_time() -> None:
    log = EventLog()
    log.append(T0, EventCode.POWER_DOWN, None)
    log.append(T0 + 60, EventCode.VOLTAGE_SAG, 190.5)
    rows = list(log.objects()[0].source.rows(NOW + timedelta(seconds=30), None))
    assert len(rows) == 1
    stamp, code, value = rows[0]
    assert parse_time(stamp) == NOW + timedelta(seconds=60)
    assert (code, value) == (LongUnsigned(10), Float64(190.5))


def test_record_event_logs_at_the_meters_clock_without_a_push_destination() -> None:
    meter = _meter()
    meter.record_event(EventCode.COVER_OPENED)
    assert meter.events == [(T0, EventCode.COVER_OPENED, None)]
    assert meter.pushes.sent == meter.pushes.failed == 0
    assert meter.security.invocation_counter == 0  # nothing ciphered when nothing is pushed


# ----------------------------------------------------------------------------------------- push setup


def test_push_setup_attributes_follow_the_blue_book_types() -> None:
    setup = PushSetup(obis.PUSH_SETUP, destination=b"127.0.0.1:4060", number_of_retries=2, repetition_delay=5)
    view = None
    assert setup.get(3, view) == Structure((Enum(0), b"127.0.0.1:4060", Enum(0)))  # type: ignore[arg-type]
    assert setup.get(6, view) == Unsigned(2)  # type: ignore[arg-type]
    assert setup.get(7, view) == LongUnsigned(5)  # type: ignore[arg-type]
    assert setup.ip_destination() == (TransportService.TCP, "127.0.0.1", 4060)


def test_push_setup_refuses_a_destination_that_is_not_host_and_port() -> None:
    setup = PushSetup(obis.PUSH_SETUP)
    with pytest.raises(CosemAccessError) as refused:
        setup.set(3, Structure((Enum(0), b"nowhere", Enum(0))), None)  # type: ignore[arg-type]
    assert refused.value.result is Result.TYPE_UNMATCHED
    setup.set(3, Structure((Enum(0), b"[::1]:4061", Enum(0))), None)  # type: ignore[arg-type]
    assert setup.ip_destination() == (TransportService.TCP, "::1", 4061)
    with pytest.raises(CosemAccessError):
        setup.set(3, Structure((Enum(1), b"4059", Enum(0))), None)  # type: ignore[arg-type]


def test_push_setup_takes_a_udp_destination_and_ignores_transports_without_one() -> None:
    setup = PushSetup(obis.PUSH_SETUP)
    setup.set(3, Structure((Enum(1), b"127.0.0.1:4059", Enum(0))), None)  # type: ignore[arg-type]
    assert setup.ip_destination() == (TransportService.UDP, "127.0.0.1", 4059)
    assert setup.get(3, None) == Structure((Enum(1), b"127.0.0.1:4059", Enum(0)))  # type: ignore[arg-type]
    setup.set(3, Structure((Enum(4), b"+441234567890", Enum(0))), None)  # type: ignore[arg-type]
    assert setup.ip_destination() is None  # an SMS number: not a destination this meter can push to


def test_push_method_without_a_destination_is_a_temporary_failure() -> None:
    pushed: list[bool] = []
    setup = PushSetup(obis.PUSH_SETUP, on_push=lambda: pushed.append(True))
    with pytest.raises(CosemAccessError) as refused:
        setup.action(1, 0, None)  # type: ignore[arg-type]
    assert refused.value.result is Result.TEMPORARY_FAILURE
    setup.destination = b"127.0.0.1:1"
    assert setup.action(1, 0, None) is None  # type: ignore[arg-type]
    assert pushed == [True]


@pytest.mark.parametrize("text", [b"", b"host", b"host:0", b"host:70000", b":4059", b"\xff:1"])
def test_parse_destination_refuses_bad_text(text: bytes) -> None:
    with pytest.raises(DlmsError):
        parse_destination(text)


# ---------------------------------------------------------------------------------------- supply model


def test_supply_outage_counts_only_the_supplied_part_of_an_interval() -> None:
    supply = SupplyLoad(_flat)
    end = T0 - T0 % INTERVAL_S + INTERVAL_S
    assert supply.fail(end - 450)
    assert not supply.powered
    assert supply(end) == (450, 45)
    assert supply(end + INTERVAL_S) == (0, 0)
    assert supply.restore(end + INTERVAL_S + 600)  # 600 s into the next interval but one
    assert supply(end + INTERVAL_S) == (0, 0)
    assert supply(end + 2 * INTERVAL_S) == (300, 30)
    assert supply(end + 3 * INTERVAL_S) == (900, 90)


def test_bypass_under_registers_import_from_the_next_interval_while_the_true_load_is_unchanged() -> None:
    supply = SupplyLoad(_flat)
    end = T0 - T0 % INTERVAL_S + INTERVAL_S
    supply.set_bypass(0.6, end - 100)
    assert supply(end - INTERVAL_S) == (900, 90)  # an interval already over is history
    assert supply(end) == (360, 90)
    assert supply.true_load(end) == (900, 90)


def test_check_load_sums_the_true_load_of_its_members() -> None:
    members = [SupplyLoad(_flat), SupplyLoad(_flat), SupplyLoad(_flat)]
    check = CheckLoad([(i, f"S{i}", m) for i, m in enumerate(members)])
    end = T0 - T0 % INTERVAL_S + INTERVAL_S
    members[0].set_bypass(0.5, end - 1)
    members[1].fail(end - INTERVAL_S)
    assert check(end) == (1_800, 180)
    assert sum(m(end)[0] for m in members) == 1_350  # what the meters themselves register


def test_power_fail_and_restore_change_the_meter_and_log_both_events() -> None:
    meter = _meter()
    assert meter.power_fail(last_gasp=True)
    assert not meter.power_fail(last_gasp=True)
    assert meter.faults.offline
    assert meter.power_restore()
    assert not meter.faults.offline
    assert [code for _, code, _ in meter.events] == [EventCode.POWER_DOWN, EventCode.POWER_UP]


# ------------------------------------------------------------------------------------------ scenarios


def test_last_gasp_choice_is_deterministic_and_near_the_share() -> None:
    serials = [f"OAM{i:08d}" for i in range(2_000)]
    picked = [s for s in serials if chosen(s, seed=7, share=0.3, salt="last-gasp")]
    assert picked == [s for s in serials if last_gasp_chosen(s, {"last_gasp_share": 0.3, "seed": 7})]
    assert 0.26 < len(picked) / len(serials) < 0.34
    assert all(chosen(s, seed=1, share=1.0, salt="x") for s in serials)
    assert not any(chosen(s, seed=1, share=0.0, salt="x") for s in serials)


@pytest.mark.parametrize(
    "message",
    [
        {"op": "power-fail", "meters": [0], "last_gasp_share": 1.5},
        {"op": "tamper", "meters": [0], "kind": "glue"},
        {"op": "voltage", "meters": [0], "volts": "low"},
        {"op": "bypass", "meters": [0], "fraction": -0.1},
        {"op": "event", "meters": [0], "code": 9999},
        {"op": "no-such-op", "meters": [0]},
    ],
)
def test_bad_scenario_parameters_are_refused_before_any_meter_changes(message: dict[str, object]) -> None:
    meter = _meter()
    with pytest.raises(control.UnknownOperation):
        control.apply({0: meter}, message)
    assert meter.events == []
    assert meter.powered


@pytest.mark.parametrize(
    ("volts", "code"),
    [(190.0, EventCode.VOLTAGE_SAG), (262.5, EventCode.VOLTAGE_SWELL), (231.0, EventCode.VOLTAGE_NORMAL)],
)
def test_voltage_scenario_records_sag_swell_or_normal_with_the_measured_value(volts: float, code: EventCode) -> None:
    meter = _meter()
    assert control.apply({0: meter}, {"op": "voltage", "meters": [0, 1], "volts": volts}) == 1
    assert meter.events == [(T0, code, volts)]


def test_tamper_kinds_map_to_their_event_codes() -> None:
    meter = _meter()
    for kind in ("cover", "magnetic", "reverse", "removed"):
        control.apply({0: meter}, {"op": "tamper", "meters": [0], "kind": kind})
    assert [code for _, code, _ in meter.events] == [40, 42, 43, 44]


def test_meters_of_follows_the_grid_and_refuses_unknown_elements() -> None:
    fleet = build_fleet(FleetConfig(meters=400, seed=5, port=0, check_meters=True))
    feeder = fleet.topology.feeders[0]
    under = meters_of(fleet, feeder=feeder.id)
    transformers = {t.id for t in fleet.topology.transformers if t.feeder_id == feeder.id}
    assert under == [i for i, sp in enumerate(fleet.topology.service_points) if sp.transformer_id in transformers]
    first = fleet.topology.transformers[0].id
    with_check = meters_of(fleet, transformer=first, include_check=True)
    assert fleet.meters[with_check[-1]].check_for_transformer == first
    assert meters_of(fleet, substation=feeder.substation_id, feeder=feeder.id) == under
    with pytest.raises(ValueError, match="unknown feeder"):
        meters_of(fleet, feeder="SS99-F99")
    with pytest.raises(ValueError, match="name a feeder"):
        meters_of(fleet)


# --------------------------------------------------------------------------------------- check meters


def test_fleet_has_one_check_meter_per_transformer_only_when_asked() -> None:
    assert build_fleet(FleetConfig(meters=60, seed=2, port=0)).check_meters == ()
    fleet = build_fleet(FleetConfig(meters=60, seed=2, port=0, check_meters=True))
    checks = fleet.check_meters
    assert [c.check_for_transformer for c in checks] == [t.id for t in fleet.topology.transformers]
    assert [c.index for c in checks] == list(range(60, 60 + len(checks)))
    assert sorted(i for c in checks for i, _, _ in c.members) == list(range(60))
    assert len({m.system_title for m in fleet.meters}) == len(fleet.meters)
    assert all(c.service_point_id is None and c.fault is None and not c.clock_offset_s for c in checks)
    without = build_fleet(FleetConfig(meters=60, seed=2, port=0))
    assert fleet.meters[:60] == without.meters  # the customers' meters do not change


def test_commissioning_lists_check_meters_per_the_contract() -> None:
    fleet = build_fleet(FleetConfig(meters=60, seed=2, port=0, check_meters=True))
    document = commissioning_document(fleet)
    validate_commissioning(document)
    entry = document["meters"][-1]
    assert entry["service_point_id"] is None
    assert entry["check_for_transformer"] == fleet.topology.transformers[-1].id
    entry["check_for_transformer"] = "SS01-F01-T999"
    with pytest.raises(ValueError, match="unknown transformers"):
        validate_commissioning(document)


def test_check_meter_round_trips_through_the_worker_job_json() -> None:
    fleet = build_fleet(FleetConfig(meters=30, seed=2, port=0, check_meters=True))
    check = fleet.check_meters[0]
    assert type(check).from_json(check.to_json()) == check


async def test_a_notification_is_ciphered_when_it_leaves_not_when_its_event_happens() -> None:
    channel = PushChannel(random.Random(1))
    made: list[str] = []

    def make(name: str) -> bytes:
        made.append(name)
        return name.encode()

    destination = (TransportService.UDP, "127.0.0.1", 9)  # discard: nothing listens there
    assert channel.submit(lambda: make("first"), destination, randomisation_s=1)
    assert channel.submit(lambda: make("second"), destination)
    assert made == []  # a storm's thousands of meters are all failed before any of them ciphers
    await channel.idle()
    assert made == ["first", "second"]  # in order: each takes the next invocation counter as it leaves
    assert channel.sent == 2
