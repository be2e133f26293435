"""VEE rules, one test per rule, named after the requirement (issue 3, part 6; docs/vee.md)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.domain.messages import CollectedReadings
from openami.domain.readings import Channel, Quality, RegisterSnapshot
from openami.mdm.estimation import AverageShape, gap_runs, interpolate, like_day
from openami.mdm.vee import (
    CHANNEL_EXPORT,
    CHANNEL_IMPORT,
    SOURCE_ESTIMATED,
    SOURCE_METER,
    MeterState,
    Row,
    expected_ends,
    history_window,
    validate,
)
from openami.settings import VeeSettings

S = 900
MONDAY = 1_772_409_600  # 2026-03-02 00:00 UTC, a Monday
WEEK = 7 * 86_400
SETTINGS = VeeSettings()
EST_GAP = int(Quality.ESTIMATED | Quality.GAP)


def make_read(
    imp: list[float],
    exp: list[float] | None = None,
    *,
    start: int = MONDAY,
    drop: frozenset[int] | set[int] = frozenset(),
    status: dict[int, int] | None = None,
    clock_skew_s: float = 0.0,
    registers: tuple[RegisterSnapshot, ...] = (),
) -> CollectedReadings:
    """A read of len(imp) intervals ending start+900 … ; indices in ``drop`` are missing from the answer."""
    exp = exp if exp is not None else [0.0] * len(imp)
    ends = [start + S * (i + 1) for i in range(len(imp))]
    keep = [i for i in range(len(imp)) if i not in drop]
    read_at = datetime.fromtimestamp(ends[-1] + 60, UTC)
    return CollectedReadings(
        meter_id=7,
        read_at=read_at,
        meter_clock=read_at + timedelta(seconds=clock_skew_s),
        requested_from=ends[0],
        requested_to=ends[-1],
        interval_ends=tuple(ends[i] for i in keep),
        import_wh=tuple(imp[i] for i in keep),
        export_wh=tuple(exp[i] for i in keep),
        status=tuple((status or {}).get(i, 0) for i in keep),
        registers=registers,
    )


def register(channel: Channel, at: int, value: float, unit: str = "Wh") -> RegisterSnapshot:
    when = datetime.fromtimestamp(at, UTC)
    return RegisterSnapshot(7, str(channel), when, value, unit, when)


def channel_rows(rows: list[Row], channel: int = CHANNEL_IMPORT) -> dict[int, Row]:
    return {r[2]: r for r in rows if r[1] == channel}


def flat(n: int, value: float = 100.0) -> list[float]:
    return [value] * n


# --- shape of the output -----------------------------------------------------------------------------


def test_a_clean_read_yields_valid_meter_rows_for_both_channels() -> None:
    msg = make_read(flat(96, 120.0), flat(96, 5.0))
    result = validate(msg, SETTINGS)
    assert len(result.rows) == 192
    assert result.counts.values == 192
    assert result.counts.estimated == result.counts.flagged == 0
    assert result.first_end == MONDAY + S
    assert result.last_end == MONDAY + 96 * S
    received = int(msg.read_at.timestamp())
    for meter_id, channel, end, value, quality, source, received_at in result.rows:
        assert (meter_id, quality, source, received_at) == (7, 0, SOURCE_METER, received)
        assert channel in (CHANNEL_IMPORT, CHANNEL_EXPORT)
        assert isinstance(end, int)
        assert value == (120.0 if channel == CHANNEL_IMPORT else 5.0)


def test_expected_ends_are_aligned_and_inclusive() -> None:
    assert expected_ends(MONDAY + S, MONDAY + 3 * S, S) == (MONDAY + S, MONDAY + 2 * S, MONDAY + 3 * S)
    assert expected_ends(MONDAY + 1, MONDAY + S, S) == (MONDAY + S,)


# --- gaps ---------------------------------------------------------------------------------------------


@given(st.sets(st.integers(min_value=0, max_value=47), max_size=48))
def test_gap_detection_finds_exactly_the_missing_intervals(drop: set[int]) -> None:
    msg = make_read(flat(48), drop=drop)
    result = validate(msg, SETTINGS)
    assert set(result.missing) == {MONDAY + S * (i + 1) for i in drop}
    actual = {r[2] for r in result.rows if r[5] == SOURCE_METER}
    assert actual.isdisjoint(result.missing)


def test_short_gap_is_interpolated_between_neighbours_and_flagged_estimated_gap() -> None:
    imp = [100.0, 200.0, 0.0, 0.0, 0.0, 600.0, 100.0]
    result = validate(make_read(imp, drop={2, 3, 4}), SETTINGS)
    rows = channel_rows(result.rows)
    assert [rows[MONDAY + S * (i + 1)][3] for i in (2, 3, 4)] == [300.0, 400.0, 500.0]
    for i in (2, 3, 4):
        assert rows[MONDAY + S * (i + 1)][4:6] == (EST_GAP, SOURCE_ESTIMATED)
    assert result.counts.estimated == 6  # both channels


def test_long_gap_is_estimated_from_the_like_day_profile() -> None:
    n = 12
    imp = flat(n, 100.0)
    drop = set(range(2, 9))  # 7 intervals > short_gap_intervals (4)
    history = {
        CHANNEL_IMPORT: {
            MONDAY + S * (i + 1) - k * WEEK: 10.0 * k + i for k in (1, 2) for i in range(n)
        }  # same weekday and time, 1 and 2 weeks back
    }
    result = validate(make_read(imp, drop=drop), SETTINGS, history=history)
    rows = channel_rows(result.rows)
    for i in drop:
        assert rows[MONDAY + S * (i + 1)][3] == pytest.approx((10.0 + i + 20.0 + i) / 2)
        assert rows[MONDAY + S * (i + 1)][4] == EST_GAP


def test_long_gap_without_like_day_falls_back_to_the_meter_average_shape() -> None:
    imp = flat(12, 100.0)
    drop = set(range(2, 9))
    # history two days back only (not the same weekday): the shape per time of day is used
    history = {CHANNEL_IMPORT: {MONDAY + S * (i + 1) - 2 * 86_400: 50.0 + i for i in range(12)}}
    result = validate(make_read(imp, drop=drop), SETTINGS, history=history)
    rows = channel_rows(result.rows)
    assert [rows[MONDAY + S * (i + 1)][3] for i in sorted(drop)] == [50.0 + i for i in sorted(drop)]


def test_gap_with_no_basis_at_all_is_reported_but_not_estimated() -> None:
    msg = make_read(flat(4), drop={0, 1, 2, 3})
    result = validate(msg, SETTINGS)
    assert result.rows == []
    assert len(result.missing) == 4
    assert result.first_end == result.last_end == 0


def test_short_gap_at_the_start_takes_its_left_neighbour_from_history() -> None:
    imp = [0.0, 300.0, 300.0]
    history = {CHANNEL_IMPORT: {MONDAY: 100.0}}
    result = validate(make_read(imp, drop={0}), SETTINGS, history=history)
    assert channel_rows(result.rows)[MONDAY + S][3] == 200.0


def test_flagged_values_are_not_used_to_interpolate() -> None:
    imp = [-50.0, 0.0, 100.0, 100.0]
    result = validate(make_read(imp, drop={1}), SETTINGS)
    estimate = channel_rows(result.rows)[MONDAY + 2 * S]
    assert estimate[3] >= 0.0
    assert estimate[3] == pytest.approx(100.0)  # from the shape of usable values, not from -50


@given(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.integers(min_value=1, max_value=50),
)
def test_interpolation_never_produces_a_negative(left: float, right: float, count: int) -> None:
    values = interpolate(left, right, count)
    assert len(values) == count
    assert all(v >= 0.0 for v in values)
    assert all(min(left, right) - 1e-6 <= v <= max(left, right) + 1e-6 for v in values)


@given(
    st.lists(st.floats(min_value=-1000, max_value=60_000, allow_nan=False), min_size=3, max_size=40),
    st.data(),
)
def test_no_estimate_is_ever_negative(values: list[float], data: st.DataObject) -> None:
    drop = data.draw(st.sets(st.integers(min_value=0, max_value=len(values) - 1)))
    result = validate(make_read(values, drop=drop), SETTINGS)
    assert all(r[3] >= 0.0 for r in result.rows if r[5] == SOURCE_ESTIMATED)


def test_gap_runs_split_consecutive_intervals() -> None:
    assert gap_runs([S, 2 * S, 4 * S, 5 * S, 9 * S], S) == [(S, 2 * S), (4 * S, 5 * S), (9 * S,)]


def test_like_day_and_average_shape_helpers() -> None:
    assert like_day(MONDAY, {MONDAY - WEEK: 4.0, MONDAY - 3 * WEEK: 8.0}, weeks=2) == 4.0
    assert like_day(MONDAY, {}, weeks=4) is None
    shape = AverageShape.of([(MONDAY + S, 10.0), (MONDAY + S + 86_400, 20.0), (MONDAY + 2 * S, 3.0)])
    assert shape.at(MONDAY + S + 7 * 86_400) == 15.0
    assert shape.at(MONDAY + 3 * S) == pytest.approx(33.0 / 3)


def test_history_window_only_when_a_gap_needs_history() -> None:
    assert history_window(make_read(flat(10)), SETTINGS) is None
    assert history_window(make_read(flat(10), drop={4, 5}), SETTINGS) is None  # interior, interpolated
    window = history_window(make_read(flat(10), drop={0}), SETTINGS)
    assert window == (MONDAY + S - SETTINGS.like_day_weeks * WEEK - S, MONDAY + 2 * S)
    assert history_window(make_read(flat(12), drop=set(range(2, 9))), SETTINGS) is not None


# --- value rules --------------------------------------------------------------------------------------


def test_negative_value_is_flagged_negative_and_kept() -> None:
    imp = flat(10)
    imp[3] = -5.0
    rows = channel_rows(validate(make_read(imp), SETTINGS).rows)
    assert rows[MONDAY + 4 * S][3:5] == (-5.0, int(Quality.NEGATIVE))
    assert rows[MONDAY + 5 * S][4] == 0


def test_value_above_max_interval_is_flagged_implausible() -> None:
    imp = flat(10)
    imp[2] = SETTINGS.max_interval_wh + 1
    rows = channel_rows(validate(make_read(imp), SETTINGS).rows)
    assert rows[MONDAY + 3 * S][4] & Quality.IMPLAUSIBLE
    assert sum(1 for r in rows.values() if r[4]) == 1


def test_nan_is_flagged_implausible() -> None:
    imp = flat(10)
    imp[5] = math.nan
    rows = channel_rows(validate(make_read(imp), SETTINGS).rows)
    assert rows[MONDAY + 6 * S][4] == int(Quality.IMPLAUSIBLE)


def test_spike_beyond_multiple_of_the_meter_typical_is_flagged() -> None:
    imp = flat(20, 100.0)
    imp[7] = 100.0 * SETTINGS.spike_multiple + 1
    imp[8] = 100.0 * SETTINGS.spike_multiple - 1
    result = validate(make_read(imp), SETTINGS)
    rows = channel_rows(result.rows)
    assert rows[MONDAY + 8 * S][4] == int(Quality.SPIKE)
    assert rows[MONDAY + 9 * S][4] == 0
    assert result.state.typical_import == 100.0


def test_spike_is_judged_against_the_remembered_typical() -> None:
    state = MeterState(typical_import=50.0)
    imp = flat(20, 600.0)  # 12 x the remembered typical, above the floor
    result = validate(make_read(imp), SETTINGS, state)
    assert all(r[4] == int(Quality.SPIKE) for r in channel_rows(result.rows).values())
    assert result.state.typical_import == pytest.approx(50.0 + (600.0 - 50.0) * 0.25)


def test_no_spike_below_the_floor_however_small_the_typical() -> None:
    state = MeterState(typical_import=1.0)
    imp = flat(20, SETTINGS.spike_floor_wh)
    assert validate(make_read(imp), SETTINGS, state).counts.flagged == 0


def test_a_read_too_short_for_its_own_typical_is_not_spike_checked() -> None:
    imp = [10.0, 10.0, 5000.0]
    assert validate(make_read(imp), SETTINGS).counts.flagged == 0


# --- registers ----------------------------------------------------------------------------------------


def test_register_delta_equal_to_the_sum_of_intervals_passes() -> None:
    imp = flat(96, 125.0)
    regs = (register(Channel.ACTIVE_IMPORT, MONDAY, 1000.0), register(Channel.ACTIVE_IMPORT, MONDAY + 86_400, 13_000.0))
    assert validate(make_read(imp, registers=regs), SETTINGS).counts.flagged == 0


def test_register_delta_beyond_tolerance_flags_only_the_intervals_between_the_snapshots() -> None:
    imp = flat(8, 100.0)
    regs = (
        register(Channel.ACTIVE_IMPORT, MONDAY + 2 * S, 5.0, "kWh"),
        register(Channel.ACTIVE_IMPORT, MONDAY + 5 * S, 5.5, "kWh"),  # 500 Wh vs 300 Wh of intervals
    )
    rows = channel_rows(validate(make_read(imp, registers=regs), SETTINGS).rows)
    flagged = sorted(end for end, r in rows.items() if r[4] & Quality.REGISTER_MISMATCH)
    assert flagged == [MONDAY + 3 * S, MONDAY + 4 * S, MONDAY + 5 * S]
    assert not any(r[4] for r in channel_rows(validate(make_read(imp, registers=regs), SETTINGS).rows, 2).values())


def test_register_from_the_previous_read_is_remembered_and_compared() -> None:
    state = MeterState(import_register=(MONDAY, 1000.0))
    regs = (register(Channel.ACTIVE_IMPORT, MONDAY + 4 * S, 1400.0),)
    ok = validate(make_read(flat(4, 100.0), registers=regs), SETTINGS, state)
    assert ok.counts.flagged == 0
    assert ok.state.import_register == (MONDAY + 4 * S, 1400.0)
    bad = validate(make_read(flat(4, 150.0), registers=regs), SETTINGS, state)
    assert bad.counts.flagged == 4


def test_register_delta_is_not_judged_when_the_read_does_not_cover_the_span() -> None:
    state = MeterState(import_register=(MONDAY - 86_400, 0.0))
    regs = (register(Channel.ACTIVE_IMPORT, MONDAY + 4 * S, 99_999.0),)
    assert validate(make_read(flat(4, 100.0), registers=regs), SETTINGS, state).counts.flagged == 0


@pytest.mark.parametrize(
    ("register_at_read", "flagged"),
    [
        (1000.0 + 400.0, 0),  # partial intervals cancel out
        (1000.0 + 400.0 - 100.0, 0),  # all of the first interval was before the previous read
        (1000.0 + 400.0 + 120 / 900 * 1000.0, 0),  # the partial interval at read time at the ceiling
        (1000.0 + 400.0 - 100.0 - 11.0, 4),  # beyond tolerance (10 Wh) below
        (1000.0 + 400.0 + 134.0 + 11.0, 4),  # beyond tolerance above
    ],
)
def test_registers_read_between_interval_ends_allow_for_the_partial_intervals(
    register_at_read: float, flagged: int
) -> None:
    """The head-end reads registers at read time: a snapshot includes part of an interval not in the profile."""
    state = MeterState(typical_import=100.0, import_register=(MONDAY + 60, 1000.0))  # ceiling 1000 Wh
    regs = (register(Channel.ACTIVE_IMPORT, MONDAY + 4 * S + 120, register_at_read),)
    result = validate(make_read(flat(4, 100.0), registers=regs), SETTINGS, state)
    assert result.counts.flagged == flagged
    assert result.state.import_register == (MONDAY + 4 * S + 120, register_at_read)


def test_estimates_between_read_time_registers_are_kept_within_what_the_registers_allow() -> None:
    state = MeterState(typical_import=100.0, import_register=(MONDAY + 60, 1000.0))
    regs = (register(Channel.ACTIVE_IMPORT, MONDAY + 4 * S + 120, 1000.0 + 900.0),)  # 700 Wh more than actuals
    result = validate(make_read(flat(4, 100.0), drop={1, 2}, registers=regs), SETTINGS, state)
    rows = channel_rows(result.rows)
    estimated = rows[MONDAY + 2 * S][3] + rows[MONDAY + 3 * S][3]
    assert 700.0 - 120 / 900 * 1000.0 - 1e-6 <= estimated <= 700.0 + 100.0 + 1e-6
    assert result.counts.flagged == 0


def test_estimates_are_prorated_to_the_register_delta() -> None:
    imp = [100.0, 0.0, 0.0, 100.0]
    regs = (register(Channel.ACTIVE_IMPORT, MONDAY, 0.0), register(Channel.ACTIVE_IMPORT, MONDAY + 4 * S, 500.0))
    result = validate(make_read(imp, drop={1, 2}, registers=regs), SETTINGS)
    rows = channel_rows(result.rows)
    assert rows[MONDAY + 2 * S][3] + rows[MONDAY + 3 * S][3] == pytest.approx(300.0)
    assert rows[MONDAY + 2 * S][4] == EST_GAP
    assert result.counts.flagged == 0


# --- clock and status ---------------------------------------------------------------------------------


def test_clock_error_beyond_tolerance_flags_every_interval_of_that_read() -> None:
    result = validate(make_read(flat(6), clock_skew_s=SETTINGS.clock_tolerance_s + 1), SETTINGS)
    assert all(r[4] == int(Quality.CLOCK_ERROR) for r in result.rows)
    assert result.counts.flagged == 12


def test_clock_within_tolerance_is_not_flagged() -> None:
    assert validate(make_read(flat(6), clock_skew_s=-SETTINGS.clock_tolerance_s), SETTINGS).counts.flagged == 0


def test_meter_status_flags_the_interval_on_both_channels() -> None:
    result = validate(make_read(flat(6), flat(6, 2.0), status={2: 0x80}), SETTINGS)
    flagged = sorted((r[1], r[2]) for r in result.rows if r[4] == int(Quality.METER_STATUS))
    assert flagged == [(CHANNEL_IMPORT, MONDAY + 3 * S), (CHANNEL_EXPORT, MONDAY + 3 * S)]


def test_status_bits_outside_the_mask_are_ignored() -> None:
    settings = VeeSettings(status_flag_mask=0xF7)  # e.g. ignore a daylight-saving bit 0x08
    assert validate(make_read(flat(6), status={1: 0x08}), settings).counts.flagged == 0
    assert validate(make_read(flat(6), status={1: 0x88}), settings).counts.flagged == 2


# --- malformed profiles -------------------------------------------------------------------------------


def test_duplicate_and_unsorted_intervals_are_normalised_last_one_wins() -> None:
    base = make_read(flat(3))
    ends = base.interval_ends
    msg = CollectedReadings(
        meter_id=7,
        read_at=base.read_at,
        meter_clock=base.meter_clock,
        requested_from=base.requested_from,
        requested_to=base.requested_to,
        interval_ends=(ends[2], ends[0], ends[1], ends[0]),
        import_wh=(3.0, 1.0, 2.0, 1.5),
        export_wh=(0.0, 0.0, 0.0, 0.0),
        status=(0, 0, 0, 0),
    )
    rows = channel_rows(validate(msg, SETTINGS).rows)
    assert [rows[e][3] for e in ends] == [1.5, 2.0, 3.0]


def test_an_interval_end_off_the_grid_is_flagged_clock_error() -> None:
    base = make_read(flat(2))
    msg = CollectedReadings(
        meter_id=7,
        read_at=base.read_at,
        meter_clock=base.meter_clock,
        requested_from=base.requested_from,
        requested_to=base.requested_to,
        interval_ends=(base.interval_ends[0], base.interval_ends[1] + 7),
        import_wh=(1.0, 1.0),
        export_wh=(0.0, 0.0),
        status=(0, 0),
    )
    result = validate(msg, SETTINGS)
    rows = channel_rows(result.rows)
    assert rows[base.interval_ends[1] + 7][4] == int(Quality.CLOCK_ERROR)
    assert result.missing == (base.interval_ends[1],)


def test_collected_readings_refuses_ragged_columns() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        CollectedReadings(7, datetime.now(UTC), None, 0, 0, (900,), (1.0,), (), (0,))
