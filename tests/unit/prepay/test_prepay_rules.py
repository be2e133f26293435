"""Prepayment rules without storage: money parsing and formatting, pricing, credit states, friendly hours."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.errors import InvalidInput
from openami.services.prepay_rules import (
    FriendlyHours,
    credit_state,
    decide_switch,
    energy_mwh,
    format_money,
    parse_money,
    price_energy,
)


def test_money_is_micro_units_of_the_major_unit_and_never_rounded_silently() -> None:
    assert parse_money("12.34", "EUR") == 12_340_000
    assert parse_money(Decimal("5"), "JPY") == 5_000_000
    assert parse_money("1.234", "KWD") == 1_234_000
    assert parse_money("0.237519", "EUR", places=6) == 237_519
    for bad, currency in (("12.345", "EUR"), ("5.5", "JPY"), ("1e400", "EUR"), ("NaN", "EUR"), ("x", "EUR")):
        with pytest.raises(InvalidInput):
            parse_money(bad, currency)
    with pytest.raises(InvalidInput, match="ISO 4217"):
        parse_money("1", "EURO")


def test_money_is_formatted_with_the_minor_unit_and_more_digits_only_when_needed() -> None:
    assert format_money(12_340_000, "EUR") == "12.34"
    assert format_money(-500_000, "EUR") == "-0.50"
    assert format_money(312_625, "EUR") == "0.312625"
    assert format_money(5_000_000, "JPY") == "5"
    assert format_money(0, "KWD") == "0.000"


@given(st.integers(-(10**15), 10**15), st.sampled_from(["EUR", "JPY", "KWD", "CLF"]))
def test_formatting_and_parsing_round_trip(micros: int, currency: str) -> None:
    assert parse_money(format_money(micros, currency), currency, places=6) == micros


def test_energy_is_whole_milliwatt_hours_and_pricing_rounds_half_to_even() -> None:
    assert energy_mwh(250.5) == 250_500
    assert energy_mwh(0.1) == 100
    assert energy_mwh(-3.0) == 0
    assert price_energy(1_000_000, 250_000) == 250_000  # 1 kWh at 0.25
    assert price_energy(1, 500_000) == 0  # 0.5 micro-units: half to even (0)
    assert price_energy(3, 500_000) == 2  # 1.5 -> 2
    assert price_energy(1, 500_001) == 1


@given(st.integers(0, 10**9), st.integers(0, 10**8))
def test_pricing_is_within_half_a_micro_unit_of_the_exact_product(mwh: int, price: int) -> None:
    exact = Decimal(mwh) * Decimal(price) / Decimal(1_000_000)
    assert abs(Decimal(price_energy(mwh, price)) - exact) <= Decimal("0.5")


def test_credit_states_and_switch_decisions() -> None:
    assert [credit_state(b, 5) for b in (-1, 0, 1, 5, 6)] == ["zero", "zero", "low", "low", "ok"]
    decide = decide_switch
    assert decide(balance=0, state="connected", in_friendly_hours=False, reconnect_threshold=0) == "disconnect"
    assert decide(balance=0, state="connected", in_friendly_hours=True, reconnect_threshold=0) is None
    assert decide(balance=0, state="connected", in_friendly_hours=False, reconnect_threshold=0, entries=0) is None
    assert decide(balance=1, state="disconnected", in_friendly_hours=False, reconnect_threshold=0) == "reconnect"
    assert decide(balance=1, state="disconnected", in_friendly_hours=True, reconnect_threshold=2) is None
    assert decide(balance=3, state="connected", in_friendly_hours=False, reconnect_threshold=0) is None


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 16 + day, hour, minute, tzinfo=UTC)  # day 0 = Monday 16 Nov 2026


def test_friendly_hours_cover_evenings_nights_weekends_and_holidays() -> None:
    hours = FriendlyHours.parse("mon-sun 18:00-08:00; sat-sun", holidays=[date(2026, 11, 18)])
    assert not hours.contains(_at(0, 9))  # Monday morning
    assert hours.contains(_at(0, 18))  # Monday evening
    assert hours.contains(_at(1, 7, 59))  # Tuesday before 08:00: Monday's window runs past midnight
    assert not hours.contains(_at(1, 8))
    assert hours.contains(_at(2, 12))  # the holiday
    assert hours.contains(_at(5, 12))  # Saturday
    assert hours.contains(_at(0, 7))  # Monday before 08:00: Sunday evening's window runs on
    assert not FriendlyHours.parse("").contains(_at(5, 12))


def test_friendly_hours_are_read_in_the_configured_time_zone() -> None:
    hours = FriendlyHours.parse("mon-fri 18:00-22:00", zone="Europe/Berlin")
    assert hours.contains(_at(0, 17))  # 18:00 in Berlin (UTC+1 in November)
    assert not hours.contains(_at(0, 21))


@pytest.mark.parametrize("text", ["someday", "mon-fri 25:00-08:00", "mon 08:00-08:00", "mon-fri 8-9", "xyz-fri"])
def test_malformed_friendly_hours_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        FriendlyHours.parse(text)


def test_a_window_past_midnight_belongs_to_the_day_it_starts() -> None:
    hours = FriendlyHours.parse("mon-fri 18:00-08:00")
    assert hours.contains(_at(5, 7))  # Saturday 07:00: Friday's night
    assert not hours.contains(_at(0, 7))  # Monday 07:00: Sunday has no window
