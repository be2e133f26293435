"""Collection windows (seed 004: residential 4-6 reads a day, commercial hourly)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from openami.domain.meters import CustomerClass
from openami.headend.reader import MeterTarget
from openami.headend.scheduler import due_meters, period_s, window_index
from openami.settings import CollectionSettings

SETTINGS = CollectionSettings()


def _target(meter_id: int, customer_class: CustomerClass = CustomerClass.RESIDENTIAL) -> MeterTarget:
    return MeterTarget(meter_id, f"S{meter_id}", "127.0.0.1", 4059, b"OAM00001", customer_class, b"k" * 16, b"a" * 16)


def test_default_windows_follow_seed_004() -> None:
    assert 86_400 // period_s(CustomerClass.RESIDENTIAL, SETTINGS) in range(4, 7)
    assert period_s(CustomerClass.COMMERCIAL, SETTINGS) == 3_600


def test_every_meter_is_due_once_per_period() -> None:
    targets = [_target(i, CustomerClass.COMMERCIAL if i % 5 == 0 else CustomerClass.RESIDENTIAL) for i in range(1, 400)]
    done: dict[int, int] = {}
    reads: Counter[int] = Counter()
    start = 1_795_000_000
    for minute in range(0, 24 * 60, 5):  # a day of scheduler ticks, five minutes apart
        now = start + minute * 60
        for meter_id in due_meters(targets, done, now, SETTINGS):
            reads[meter_id] += 1
            target = targets[meter_id - 1]
            done[meter_id] = window_index(meter_id, period_s(target.customer_class, SETTINGS), now)
    for target in targets:
        per_day = 86_400 // period_s(target.customer_class, SETTINGS)
        assert reads[target.meter_id] in (per_day, per_day + 1), target.meter_id  # +1: the catch-up at start


def test_a_meter_never_read_is_due_at_once() -> None:
    assert due_meters([_target(7)], {}, 1_795_000_000, SETTINGS) == [7]


@given(st.integers(min_value=1, max_value=10**7))
def test_slots_spread_meters_over_the_period(meter_id: int) -> None:
    period = period_s(CustomerClass.RESIDENTIAL, SETTINGS)
    now = 1_795_000_000
    assert window_index(meter_id, period, now + period) == window_index(meter_id, period, now) + 1


def test_neighbouring_meters_get_different_slots() -> None:
    period = period_s(CustomerClass.COMMERCIAL, SETTINGS)
    halfway = 10 * period + period // 2  # meters with a slot in the first half have started window 10
    started = [window_index(m, period, halfway) == 10 for m in range(1, 101)]
    assert 25 < sum(started) < 75
