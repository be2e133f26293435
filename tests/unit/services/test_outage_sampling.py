"""Choosing the meters to ping (services.outage._pick): distinct, eligible, uniform, never more than asked."""

from __future__ import annotations

import collections
import random

from openami.services.outage import _DRAWS_PER_PICK, _SCAN_BELOW, _pick


def test_a_big_pool_gives_as_many_distinct_eligible_meters_as_asked() -> None:
    pool = tuple(range(10_000))
    picked = _pick(random.Random(1), pool, 5, lambda m: m % 2 == 0)
    assert len(picked) == 5
    assert len(set(picked)) == 5
    assert all(m % 2 == 0 and m in pool for m in picked)


def test_the_same_seed_gives_the_same_sample() -> None:
    pool = tuple(range(5_000))
    assert _pick(random.Random(7), pool, 5, bool) == _pick(random.Random(7), pool, 5, bool)


def test_nothing_is_asked_for_a_count_of_zero_or_less() -> None:
    calls: list[int] = []

    def ok(meter: int) -> bool:
        calls.append(meter)
        return True

    assert _pick(random.Random(1), tuple(range(1_000)), 0, ok) == []
    assert _pick(random.Random(1), tuple(range(1_000)), -3, ok) == []
    assert calls == []


def test_a_big_pool_whose_draws_keep_missing_is_scanned_and_still_gives_the_few_eligible() -> None:
    pool = tuple(range(50_000))
    rare = {17, 29_999, 49_998}  # draws almost never hit these: the scan must find them
    picked = _pick(random.Random(3), pool, 5, rare.__contains__)
    assert sorted(picked) == sorted(rare)


def test_a_small_pool_is_scanned_and_gives_no_more_than_it_has() -> None:
    pool = tuple(range(_SCAN_BELOW))
    assert sorted(_pick(random.Random(1), pool, 10, lambda m: m < 4)) == [0, 1, 2, 3]
    assert _pick(random.Random(1), pool, 3, lambda m: False) == []


def test_a_big_pool_is_not_walked_when_draws_suffice() -> None:
    pool = tuple(range(100_000))
    looked: list[int] = []

    def ok(meter: int) -> bool:
        looked.append(meter)
        return True

    _pick(random.Random(2), pool, 5, ok)
    assert len(looked) <= 5 * _DRAWS_PER_PICK


def test_the_sample_is_uniform_over_the_eligible_meters() -> None:
    pool = tuple(range(1_000))
    eligible = [m for m in pool if m % 10 == 0]  # 100 of them
    counts: collections.Counter[int] = collections.Counter()
    rng = random.Random(11)
    for _ in range(4_000):
        counts.update(_pick(rng, pool, 5, lambda m: m % 10 == 0))
    assert set(counts) == set(eligible)
    expected = 4_000 * 5 / len(eligible)  # 200 each
    assert all(0.7 * expected < n < 1.3 * expected for n in counts.values())
