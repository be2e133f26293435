"""The head-end's reading of a meter's load profile: layout by capture objects, cumulative → interval."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from openami.errors import MeterCommunicationError
from openami.headend.reader import INTERVAL_S, ProfileLayout, _interval_columns
from openami.protocols.dlms import obis
from openami.protocols.dlms.client import ProfileRow
from openami.protocols.dlms.cosem.profile import CaptureObject

STATUS = obis.Obis.parse("0.0.96.10.1.255")
STANDARD = (
    CaptureObject(8, obis.CLOCK, 2),
    CaptureObject(3, obis.ACTIVE_IMPORT, 2),
    CaptureObject(3, obis.ACTIVE_EXPORT, 2),
    CaptureObject(1, STATUS, 2),
)
T0 = 1_795_000_500 - 1_795_000_500 % INTERVAL_S


def _row(end: int, *values: int) -> ProfileRow:
    return ProfileRow(datetime.fromtimestamp(end, UTC), tuple(values))


def test_layout_finds_registers_by_identity_not_position() -> None:
    reordered = (STANDARD[3], STANDARD[2], STANDARD[0], STANDARD[1])
    layout = ProfileLayout.of(reordered)
    assert (layout.import_index, layout.export_index, layout.status_index) == (2, 1, 0)


def test_layout_without_both_energy_registers_is_refused() -> None:
    with pytest.raises(MeterCommunicationError, match="both active energy registers"):
        ProfileLayout.of(STANDARD[:2])
    with pytest.raises(MeterCommunicationError, match="no clock"):
        ProfileLayout.of(STANDARD[1:])


def test_interval_energy_is_the_difference_of_cumulative_captures() -> None:
    rows = [_row(T0, 1000, 50, 0), _row(T0 + INTERVAL_S, 1120, 50, 0), _row(T0 + 2 * INTERVAL_S, 1300, 55, 8)]
    ends, imports, exports, status = _interval_columns(
        rows, ProfileLayout.of(STANDARD), (0, 0), (T0 + INTERVAL_S, T0 + 2 * INTERVAL_S)
    )
    assert ends == (T0 + INTERVAL_S, T0 + 2 * INTERVAL_S)
    assert imports == (120.0, 180.0)
    assert exports == (0.0, 5.0)
    assert status == (0, 8)


def test_scaler_applies_to_profile_values() -> None:
    rows = [_row(T0, 10, 0, 0), _row(T0 + INTERVAL_S, 13, 0, 0)]
    _, imports, _, _ = _interval_columns(rows, ProfileLayout.of(STANDARD), (3, 0), (T0, T0 + INTERVAL_S))
    assert imports == (3000.0,)


def test_a_capture_without_its_predecessor_is_a_gap_not_a_value() -> None:
    rows = [_row(T0, 100, 0, 0), _row(T0 + 2 * INTERVAL_S, 300, 0, 0), _row(T0 + 3 * INTERVAL_S, 340, 0, 0)]
    ends, imports, _, _ = _interval_columns(rows, ProfileLayout.of(STANDARD), (0, 0), (T0, T0 + 3 * INTERVAL_S))
    assert ends == (T0 + 3 * INTERVAL_S,)
    assert imports == (40.0,)


def test_captures_out_of_order_are_skipped() -> None:
    rows = [_row(T0, 100, 0, 0), _row(T0 + INTERVAL_S, 110, 0, 0), _row(T0, 999, 0, 0)]
    ends, imports, _, _ = _interval_columns(rows, ProfileLayout.of(STANDARD), (0, 0), (T0, T0 + INTERVAL_S))
    assert (ends, imports) == ((T0 + INTERVAL_S,), (10.0,))


def test_rows_that_do_not_match_the_cached_layout_are_refused() -> None:
    rows = [_row(T0, 100, 0), _row(T0 + INTERVAL_S, 110, 0)]
    with pytest.raises(MeterCommunicationError, match="capture objects"):
        _interval_columns(rows, ProfileLayout.of(STANDARD), (0, 0), (T0, T0 + INTERVAL_S))


def test_a_profile_column_that_is_not_a_number_is_a_clear_error() -> None:
    rows = [_row(T0, 100, 0, 0), ProfileRow(datetime.fromtimestamp(T0 + INTERVAL_S, UTC), (b"x", 0, 0))]
    with pytest.raises(MeterCommunicationError, match="not numbers"):
        _interval_columns(rows, ProfileLayout.of(STANDARD), (0, 0), (T0, T0 + INTERVAL_S))
