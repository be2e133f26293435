"""The load models: plausible magnitudes, the daily/weekly shapes, PV and EV, determinism."""

from __future__ import annotations

import calendar

import pytest

from openami.domain.meters import CustomerClass
from openami.sim.loadshape import INTERVAL_S, SLOTS_PER_DAY, LoadModel, LoadParams, draw_params, unit_hash

YEAR_START = calendar.timegm((2025, 1, 1, 0, 0, 0))  # a Wednesday
DAY = 86_400
RES = CustomerClass.RESIDENTIAL
COM = CustomerClass.COMMERCIAL


def interval_ends(start: int, days: int) -> range:
    return range(start + INTERVAL_S, start + days * DAY + 1, INTERVAL_S)


def year_kwh(model: LoadModel) -> tuple[float, float]:
    values = [model(end) for end in interval_ends(YEAR_START, 365)]
    return sum(v[0] for v in values) / 1000, sum(v[1] for v in values) / 1000


def day_wh(model: LoadModel, day_start: int) -> int:
    return sum(model(end)[0] for end in interval_ends(day_start, 1))


def first_with(customer_class: CustomerClass, *, pv: bool = False, ev: bool = False) -> LoadParams:
    """The first drawn parameters (by seed) with or without PV and EV."""
    for seed in range(10_000):
        params = draw_params(seed, customer_class, weather_seed=1)
        if (params.pv_kwp > 0) == pv and (params.ev_kw > 0) == ev:
            return params
    raise AssertionError("no such meter in 10,000 seeds")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_residential_annual_energy_is_that_of_a_household(seed: int) -> None:
    params = LoadParams(seed, RES, draw_params(seed, RES).annual_kwh)
    imported, exported = year_kwh(LoadModel(params))
    assert 2_800 <= imported <= 4_700
    assert imported == pytest.approx(params.annual_kwh, rel=0.05)
    assert exported == 0


def test_commercial_annual_energy_is_tens_of_mwh() -> None:
    params = first_with(COM)
    imported, _ = year_kwh(LoadModel(params))
    assert 18_000 <= imported <= 85_000
    assert imported == pytest.approx(params.annual_kwh, rel=0.05)


def test_ev_charging_adds_a_car_s_worth_of_energy_in_evening_and_night_blocks() -> None:
    params = first_with(RES, ev=True)
    with_ev = LoadModel(params)
    without = LoadModel(LoadParams(params.seed, RES, params.annual_kwh))
    extra = year_kwh(with_ev)[0] - year_kwh(without)[0]
    assert 800 <= extra <= 3_500  # 5,000-15,000 km a year
    charging_slots = set()
    for end in interval_ends(YEAR_START, 60):
        if with_ev(end)[0] - without(end)[0] >= params.ev_kw * 1000 / 4 - 1:
            charging_slots.add(((end - INTERVAL_S) % DAY) // INTERVAL_S)
    assert charging_slots
    assert all(slot >= 68 or slot < 40 for slot in charging_slots)  # 17:00 to 10:00 at the latest


def test_pv_meters_export_at_midday_in_summer_and_never_at_night() -> None:
    model = LoadModel(first_with(RES, pv=True))
    june = calendar.timegm((2025, 6, 1, 0, 0, 0))
    noon_exports = [model(june + d * DAY + 12 * 3600 + INTERVAL_S)[1] for d in range(30)]
    assert sum(e > 0 for e in noon_exports) >= 27
    night = [model(june + d * DAY + h * INTERVAL_S) for d in range(30) for h in range(1, 16)]  # 00:00-03:45
    assert all(exported == 0 and imported > 0 for imported, exported in night)


def test_pv_yield_is_plausible_for_central_europe() -> None:
    params = first_with(RES, pv=True)
    with_pv = year_kwh(LoadModel(params))
    without = year_kwh(LoadModel(LoadParams(params.seed, RES, params.annual_kwh)))
    produced = without[0] - with_pv[0] + with_pv[1]
    assert 700 <= produced / params.pv_kwp <= 1_200  # kWh per kWp and year


def test_commercial_weekday_exceeds_weekend() -> None:
    model = LoadModel(first_with(COM))
    monday = calendar.timegm((2025, 3, 3, 0, 0, 0))
    weekdays = [day_wh(model, monday + d * DAY) for d in range(5)]
    saturday, sunday = day_wh(model, monday + 5 * DAY), day_wh(model, monday + 6 * DAY)
    assert min(weekdays) > saturday > sunday


def test_commercial_business_hours_plateau() -> None:
    model = LoadModel(first_with(COM))
    tuesday = calendar.timegm((2025, 3, 4, 0, 0, 0))
    at = [model(tuesday + (slot + 1) * INTERVAL_S)[0] for slot in range(SLOTS_PER_DAY)]
    assert min(at[44:60]) > 1.5 * max(at[:16])  # 11:00-15:00 against 00:00-04:00


def test_residential_evening_peak_and_night_base() -> None:
    model = LoadModel(first_with(RES))
    start = calendar.timegm((2025, 2, 3, 0, 0, 0))
    hourly = [0.0] * 24
    for end in interval_ends(start, 28):
        hourly[((end - INTERVAL_S) % DAY) // 3600] += model(end)[0]
    assert max(hourly[17:22]) > 2 * min(hourly[1:5])
    assert max(hourly[6:10]) > min(hourly[1:5])


def test_residential_winter_uses_more_than_summer() -> None:
    model = LoadModel(first_with(RES))
    january = sum(day_wh(model, YEAR_START + d * DAY) for d in range(28))
    july = sum(day_wh(model, calendar.timegm((2025, 7, 1, 0, 0, 0)) + d * DAY) for d in range(28))
    assert january > 1.2 * july


def test_same_interval_gives_same_value_in_any_order_and_any_instance() -> None:
    params = first_with(RES, pv=True)
    ends = list(interval_ends(YEAR_START, 10))
    forward = [LoadModel(params)(end) for end in ends]
    backward_model = LoadModel(params)
    backward = [backward_model(end) for end in reversed(ends)]
    assert forward == backward[::-1]


def test_meters_differ_from_each_other() -> None:
    ends = list(interval_ends(YEAR_START, 1))
    profiles = {tuple(LoadModel(draw_params(seed, RES))(end) for end in ends) for seed in range(20)}
    assert len(profiles) == 20


def test_utc_offset_shifts_the_local_day() -> None:
    base = LoadParams(3, COM, 40_000.0)
    shifted = LoadParams(3, COM, 40_000.0, utc_offset_s=3600)
    monday = calendar.timegm((2025, 3, 3, 0, 0, 0))
    for slot in range(1, SLOTS_PER_DAY - 4):
        end = monday + slot * INTERVAL_S
        assert LoadModel(shifted)(end - 3600) == LoadModel(base)(end)


def test_draw_params_prevalence_of_pv_and_ev() -> None:
    drawn = [draw_params(seed, RES) for seed in range(2_000)]
    pv = sum(p.pv_kwp > 0 for p in drawn) / len(drawn)
    ev = sum(p.ev_kw > 0 for p in drawn) / len(drawn)
    assert 0.08 <= pv <= 0.16
    assert 0.06 <= ev <= 0.14


def test_unit_hash_is_uniform_enough() -> None:
    values = [unit_hash(42, n) for n in range(10_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert sum(values) / len(values) == pytest.approx(0.5, abs=0.02)
    assert unit_hash(42, 7) == unit_hash(42, 7) != unit_hash(43, 7)
