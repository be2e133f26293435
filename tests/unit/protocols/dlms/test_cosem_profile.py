"""Profile Generic (class 7): buffer, capture objects and selective access by range and by entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from openami.protocols.dlms import axdr
from openami.protocols.dlms.axdr import Array, DoubleLongUnsigned, Integer, LongUnsigned, Structure, Unsigned
from openami.protocols.dlms.connection import EncodedData
from openami.protocols.dlms.cosem import (
    AccessRights,
    AssociationInfo,
    CaptureObject,
    CosemObject,
    EncodedRows,
    ListProfileSource,
    LogicalDevice,
    ProfileGeneric,
    Result,
)
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.obis import ACTIVE_EXPORT, ACTIVE_IMPORT, CLOCK, LOAD_PROFILE, Obis


class View:
    """An association with full rights on everything (the rights themselves are tested elsewhere)."""

    client_sap = 1
    client_system_title = b"CLIENT01"
    now = datetime(2026, 3, 2, tzinfo=UTC)

    def __init__(self, device: LogicalDevice) -> None:
        self.device = device

    def rights_for(self, obj: CosemObject) -> AccessRights:
        return obj.natural_rights()

    def visible_objects(self) -> list[tuple[CosemObject, AccessRights]]:
        return [(o, o.natural_rights()) for o in self.device]

    def association_info(self) -> AssociationInfo:
        return AssociationInfo(1, 3, 5, 0, 1024, 1024, 2)

    def reply_to_hls(self, f_stoc: bytes) -> bytes:
        raise NotImplementedError


START = datetime(2026, 3, 1, tzinfo=UTC)
CLOCK_COLUMN = CaptureObject(8, CLOCK, 2)
IMPORT_COLUMN = CaptureObject(3, ACTIVE_IMPORT, 2)
EXPORT_COLUMN = CaptureObject(3, ACTIVE_EXPORT, 2)
NAME = bytes(LOAD_PROFILE)


def _stamp(at: datetime) -> bytes:
    return CosemDateTime.from_datetime(at).to_bytes()


def _device(rows: int = 8, limit: int = 96) -> LogicalDevice:
    source = ListProfileSource(limit)
    for i in range(rows):
        at = START + timedelta(minutes=15 * (i + 1))
        source.capture((_stamp(at), DoubleLongUnsigned(1000 + i), DoubleLongUnsigned(i), Unsigned(0)))
    profile = ProfileGeneric(
        LOAD_PROFILE,
        capture_objects=[CLOCK_COLUMN, IMPORT_COLUMN, EXPORT_COLUMN, CaptureObject(1, Obis(0, 0, 96, 10, 1, 255), 2)],
        capture_period=900,
        source=source,
        profile_entries=limit,
    )
    return LogicalDevice([profile])


def _get(device: LogicalDevice, attribute: int, selection: tuple[int, axdr.Data] | None = None) -> tuple:
    """GET through the device; the buffer comes back already encoded, so decode it to compare."""
    result, value = device.get(View(device), 7, NAME, attribute, selection)
    if isinstance(value, EncodedData):
        value = axdr.decode_all(value)
    return result, value


def _range(start: datetime, end: datetime, columns: list[CaptureObject] | None = None) -> Structure:
    selected = Array(c.to_data() for c in columns or [])
    return Structure((CLOCK_COLUMN.to_data(), _stamp(start), _stamp(end), selected))


def _entries(first: int, last: int, first_column: int = 1, last_column: int = 0) -> Structure:
    return Structure(
        (DoubleLongUnsigned(first), DoubleLongUnsigned(last), LongUnsigned(first_column), LongUnsigned(last_column))
    )


def test_capture_objects_and_sizes() -> None:
    device = _device(rows=8, limit=96)
    view = View(device)
    result, captures = device.get(view, 7, NAME, 3)
    assert result is Result.SUCCESS
    assert [CaptureObject.from_data(c) for c in captures][:3] == [CLOCK_COLUMN, IMPORT_COLUMN, EXPORT_COLUMN]
    assert device.get(view, 7, NAME, 4) == (Result.SUCCESS, DoubleLongUnsigned(900))
    assert device.get(view, 7, NAME, 7) == (Result.SUCCESS, DoubleLongUnsigned(8))
    assert device.get(view, 7, NAME, 8) == (Result.SUCCESS, DoubleLongUnsigned(96))


def test_whole_buffer_without_selective_access() -> None:
    device = _device(rows=8)
    result, buffer = _get(device, 2)
    assert result is Result.SUCCESS
    assert len(buffer) == 8
    assert buffer[0][1] == DoubleLongUnsigned(1000)
    assert axdr.decode_all(axdr.encode(buffer)) == buffer


def test_range_descriptor_includes_both_ends() -> None:
    device = _device(rows=8)
    start, end = START + timedelta(minutes=30), START + timedelta(minutes=60)
    result, buffer = _get(device, 2, (1, _range(start, end)))
    assert result is Result.SUCCESS
    times = [CosemDateTime.from_bytes(row[0]).to_datetime() for row in buffer]
    assert times == [start, start + timedelta(minutes=15), end]


def test_range_descriptor_with_selected_columns() -> None:
    device = _device(rows=8)
    selection = _range(START, START + timedelta(hours=1), [CLOCK_COLUMN, EXPORT_COLUMN])
    result, buffer = _get(device, 2, (1, selection))
    assert result is Result.SUCCESS
    assert [len(row) for row in buffer] == [2, 2, 2, 2]
    assert buffer[-1][1] == DoubleLongUnsigned(3)


def test_range_outside_the_buffer_is_empty_not_an_error() -> None:
    device = _device(rows=8)
    result, buffer = _get(device, 2, (1, _range(START - timedelta(days=2), START)))
    assert (result, buffer) == (Result.SUCCESS, Array())


def test_range_restricted_by_another_column_is_refused() -> None:
    device = _device()
    bad = Structure((IMPORT_COLUMN.to_data(), _stamp(START), _stamp(START), Array()))
    assert _get(device, 2, (1, bad))[0] is Result.TYPE_UNMATCHED


@pytest.mark.parametrize(
    "parameters",
    [
        Unsigned(1),
        Structure((Unsigned(1),)),
        Structure((CLOCK_COLUMN.to_data(), b"short", b"short", Array())),
        Structure((CLOCK_COLUMN.to_data(), b"\xff" * 12, b"\xff" * 12, Array())),
        Structure((CLOCK_COLUMN.to_data(), _stamp(START), _stamp(START), Unsigned(0))),
        Structure(
            (CLOCK_COLUMN.to_data(), _stamp(START), _stamp(START), Array([CaptureObject(1, CLOCK, 9).to_data()]))
        ),
    ],
)
def test_malformed_range_descriptor_is_type_unmatched(parameters: axdr.Data) -> None:
    device = _device()
    assert _get(device, 2, (1, parameters)) == (Result.TYPE_UNMATCHED, None)


def test_entry_descriptor_counts_from_one_and_zero_means_last() -> None:
    device = _device(rows=8)
    result, buffer = _get(device, 2, (2, _entries(7, 0)))
    assert result is Result.SUCCESS
    assert [row[1] for row in buffer] == [DoubleLongUnsigned(1006), DoubleLongUnsigned(1007)]


def test_entry_descriptor_selects_columns() -> None:
    device = _device(rows=8)
    result, buffer = _get(device, 2, (2, _entries(1, 2, 2, 3)))
    assert result is Result.SUCCESS
    assert buffer == Array([Structure((1000, 0)), Structure((1001, 1))])


def test_entry_descriptor_past_the_end_is_empty() -> None:
    device = _device(rows=8)
    assert _get(device, 2, (2, _entries(20, 30))) == (Result.SUCCESS, Array())


def test_unsupported_selector_answers_other_reason() -> None:
    device = _device()
    assert _get(device, 2, (3, Integer(0)))[0] is Result.OTHER_REASON
    assert device.get(View(device), 7, NAME, 3, (1, Integer(0)))[0] is Result.OTHER_REASON


def test_stored_buffer_keeps_the_newest_profile_entries() -> None:
    device = _device(rows=10, limit=4)
    _, buffer = _get(device, 2)
    assert [row[1] for row in buffer] == [1006, 1007, 1008, 1009]


def test_reset_method_empties_a_stored_buffer() -> None:
    device = _device(rows=3)
    view = View(device)
    assert device.action(view, 7, NAME, 1, Integer(0)) == (Result.SUCCESS, None)
    assert device.get(view, 7, NAME, 7) == (Result.SUCCESS, DoubleLongUnsigned(0))
    assert device.action(view, 7, NAME, 2, Integer(0))[0] is Result.TYPE_UNMATCHED


def test_buffer_is_sent_encoded_and_pre_encoded_rows_pass_through() -> None:
    row = (_stamp(START), DoubleLongUnsigned(7), DoubleLongUnsigned(0), Unsigned(0))

    class Encoded(ListProfileSource):
        def entries(self, first: int, last: int) -> list:
            return [EncodedData(axdr.encode(Structure(r))) for r in super().entries(first, last)]

    source = Encoded(4)
    source.capture(row)
    profile = ProfileGeneric(
        LOAD_PROFILE, capture_objects=[CLOCK_COLUMN, IMPORT_COLUMN, EXPORT_COLUMN], capture_period=900,
        source=source, profile_entries=4,
    )  # fmt: skip
    device = LogicalDevice([profile])
    _result, raw = device.get(View(device), 7, NAME, 2)
    assert isinstance(raw, EncodedData)
    assert raw == axdr.encode(Array([Structure(row)]))
    _, columns = _get(device, 2, (2, _entries(1, 0, 2, 2)))
    assert columns == Array([Structure((7,))])


def test_rows_encoded_in_one_go_are_sent_as_they_are_and_still_select_columns() -> None:
    rows = [(_stamp(START + timedelta(minutes=15 * i)), DoubleLongUnsigned(7 + i), DoubleLongUnsigned(i), Unsigned(0))
            for i in range(3)]  # fmt: skip

    class Packed(ListProfileSource):
        def entries(self, first: int, last: int) -> EncodedRows:
            chosen = super().entries(first, last)
            return EncodedRows(len(chosen), b"".join(axdr.encode(Structure(r)) for r in chosen))

    source = Packed(4)
    for row in rows:
        source.capture(row)
    assert list(source.entries(1, 3)) == [axdr.encode(Structure(r)) for r in rows]
    profile = ProfileGeneric(
        LOAD_PROFILE, capture_objects=[CLOCK_COLUMN, IMPORT_COLUMN, EXPORT_COLUMN], capture_period=900,
        source=source, profile_entries=4,
    )  # fmt: skip
    device = LogicalDevice([profile])
    _result, raw = device.get(View(device), 7, NAME, 2)
    assert raw == axdr.encode(Array(Structure(r) for r in rows))
    _, columns = _get(device, 2, (2, _entries(2, 0, 2, 2)))
    assert columns == Array([Structure((8,)), Structure((9,))])


def test_encoded_rows_must_be_rows_of_equal_size() -> None:
    with pytest.raises(ValueError, match="equal size"):
        EncodedRows(2, b"abc")
    assert list(EncodedRows(0, b"")) == []
