"""Profile Generic (class 7) interface class (Blue Book, clause 4.3.6), with selective access.

The buffer is not necessarily stored: a :class:`ProfileSource` yields rows on demand, so a
simulated meter can compute any range from a load model and a real store can page from disk.
Selective access (IEC 62056-6-2, Profile Generic ``buffer``):

- selector 1, range_descriptor ``{restricting_object, from_value, to_value, selected_values}``:
  rows whose clock column lies in [from_value, to_value], both ends inclusive; the restricting
  object must be the clock capture object; empty ``selected_values`` means all columns;
- selector 2, entry_descriptor ``{from_entry, to_entry, from_selected_value, to_selected_value}``:
  entries and columns numbered from 1, ``to_entry``/``to_selected_value`` 0 meaning the last one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, Self

from openami.protocols.dlms.axdr import (
    Array,
    DoubleLongUnsigned,
    Enum,
    Integer,
    LongUnsigned,
    Structure,
    decode_all,
    encode,
    encode_length,
)
from openami.protocols.dlms.connection import EncodedData
from openami.protocols.dlms.cosem.base import AssociationView, CosemObject, Value, as_int, require
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import Obis

__all__ = [
    "CaptureObject",
    "EncodedRows",
    "ListProfileSource",
    "ProfileGeneric",
    "ProfileSource",
    "Row",
    "SortMethod",
    "parse_time",
]

Row = Sequence[Value]
"""One capture: a value per capture object, in capture_objects order; or an ``EncodedData`` holding
the row's structure already encoded (a fast source's choice)."""

CLOCK_CLASS_ID = 8
CLOCK_TIME_ATTRIBUTE = 2


class SortMethod(enum.IntEnum):
    FIFO = 1
    LIFO = 2
    LARGEST = 3
    SMALLEST = 4
    NEAREST_TO_ZERO = 5
    FARTHEST_FROM_ZERO = 6


@dataclass(frozen=True, slots=True)
class CaptureObject:
    """capture_object_definition ``{class_id, logical_name, attribute_index, data_index}``."""

    class_id: int
    logical_name: Obis
    attribute_index: int
    data_index: int = 0

    def to_data(self) -> Structure:
        return Structure(
            (
                LongUnsigned(self.class_id),
                self.logical_name.to_bytes(),
                Integer(self.attribute_index),
                LongUnsigned(self.data_index),
            )
        )

    @classmethod
    def from_data(cls, value: Value) -> Self:
        """Read the structure form; raises DlmsError when it is not one."""
        if not (isinstance(value, tuple) and len(value) == 4):
            raise DlmsError("capture object definition is not a 4-element structure")
        class_id, name, attribute, data_index = value
        if not (isinstance(class_id, int) and isinstance(name, bytes) and isinstance(attribute, int)):
            raise DlmsError("capture object definition has members of the wrong type")
        if not isinstance(data_index, int):
            raise DlmsError("capture object definition has members of the wrong type")
        return cls(int(class_id), Obis.from_bytes(name), int(attribute), int(data_index))

    @property
    def is_clock(self) -> bool:
        return self.class_id == CLOCK_CLASS_ID and self.attribute_index == CLOCK_TIME_ATTRIBUTE


class EncodedRows:
    """Rows a source has encoded back to back in one go, each an A-XDR structure of the same size.

    Iterating gives one ``EncodedData`` per row; :class:`ProfileGeneric` sends ``data`` as it is when
    no columns are selected (one copy for the whole buffer instead of one object per row).
    """

    __slots__ = ("count", "data")

    def __init__(self, count: int, data: bytes) -> None:
        if count < 0 or (len(data) % count if count else len(data)):
            raise ValueError("encoded rows must be `count` rows of equal size")
        self.count = count
        self.data = data

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[EncodedData]:
        size = len(self.data) // self.count if self.count else 0
        data = self.data
        return (EncodedData(data[at : at + size]) for at in range(0, len(data), size or 1))


class ProfileSource(Protocol):
    """Where a profile's rows come from; rows are oldest first, each a value per capture object."""

    def entries_in_use(self) -> int:
        """How many rows the buffer holds now."""
        ...

    def rows(self, from_dt: datetime | None, to_dt: datetime | None) -> Iterable[Row]:
        """Rows whose capture time is in [from_dt, to_dt] (aware UTC, inclusive; None = unbounded)."""
        ...

    def entries(self, first: int, last: int) -> Iterable[Row]:
        """Rows ``first``..``last`` (1-based, inclusive, 1 <= first <= last <= entries_in_use())."""
        ...


def parse_time(value: Value) -> datetime:
    """A date-time selective access bound (12-byte octet-string or date-time) as aware UTC.

    A bound without deviation is read as UTC (this meter's clock runs in UTC). Raises DlmsError.
    """
    if isinstance(value, bytes):
        value = CosemDateTime.from_bytes(value)
    if not isinstance(value, CosemDateTime):
        raise DlmsError("range bound is not a date-time")
    if value.deviation is None:
        value = CosemDateTime(
            value.year, value.month, value.day, value.weekday, value.hour, value.minute, value.second,
            value.hundredths, 0, value.clock_status,
        )  # fmt: skip
    return value.to_datetime()


class ListProfileSource:
    """A stored buffer (FIFO, at most ``profile_entries`` rows); the clock column gives the time."""

    def __init__(self, profile_entries: int, clock_column: int = 0) -> None:
        self.profile_entries = profile_entries
        self.clock_column = clock_column
        self._rows: list[Row] = []

    def capture(self, row: Row) -> None:
        """Append a row, dropping the oldest beyond ``profile_entries``."""
        self._rows.append(tuple(row))
        del self._rows[: max(0, len(self._rows) - self.profile_entries)]

    def reset(self) -> None:
        self._rows.clear()

    def entries_in_use(self) -> int:
        return len(self._rows)

    def rows(self, from_dt: datetime | None, to_dt: datetime | None) -> Iterator[Row]:
        for row in self._rows:
            at = parse_time(row[self.clock_column])
            if (from_dt is None or at >= from_dt) and (to_dt is None or at <= to_dt):
                yield row

    def entries(self, first: int, last: int) -> Iterable[Row]:
        return self._rows[first - 1 : last]


class ProfileGeneric(CosemObject):
    """Profile generic (class_id 7, version 1).

    Attributes: 2 buffer, 3 capture_objects, 4 capture_period (s), 5 sort_method, 6 sort_object,
    7 entries_in_use, 8 profile_entries. Only FIFO order is produced (rows oldest first). Methods
    1 reset and 2 capture work when the source offers ``reset()``/``capture_now()``.
    """

    class_id = 7
    version = 1
    attribute_count = 8
    method_count = 2
    selectors = {2: (1, 2)}  # noqa: RUF012 - class-level constant, never mutated

    def __init__(
        self,
        logical_name: Obis,
        *,
        capture_objects: Sequence[CaptureObject],
        capture_period: int,
        source: ProfileSource,
        profile_entries: int,
    ) -> None:
        super().__init__(logical_name)
        self.capture_objects = tuple(capture_objects)
        self.capture_period = capture_period
        self.source = source
        self.profile_entries = profile_entries

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return self.buffer(selector, parameters)
        if attribute == 3:
            return Array(c.to_data() for c in self.capture_objects)
        if attribute == 4:
            return DoubleLongUnsigned(self.capture_period)
        if attribute == 5:
            return Enum(SortMethod.FIFO)
        if attribute == 6:
            return CaptureObject(0, Obis(0, 0, 0, 0, 0, 0), 0, 0).to_data()
        if attribute == 7:
            return DoubleLongUnsigned(self.source.entries_in_use())
        return DoubleLongUnsigned(self.profile_entries)

    def buffer(self, selector: int | None, parameters: Value) -> EncodedData:
        """The buffer (array of structures), already encoded, for no selection, a range or entries.

        Rows the source yields as ``EncodedData`` are copied as they are; others are encoded.
        """
        if selector == 1:
            rows, columns = self._by_range(parameters)
        elif selector == 2:
            rows, columns = self._by_entry(parameters)
        else:
            count = self.source.entries_in_use()
            rows, columns = (self.source.entries(1, count) if count else ()), None
        if columns is None and isinstance(rows, EncodedRows):
            return EncodedData(b"\x01" + encode_length(rows.count) + rows.data)
        if columns is None:
            encoded = [row if isinstance(row, EncodedData) else encode(Structure(row)) for row in rows]
        else:
            encoded = [encode(Structure(_values(row)[i] for i in columns)) for row in rows]
        return EncodedData(b"\x01" + encode_length(len(encoded)) + b"".join(encoded))

    def _by_range(self, parameters: Value) -> tuple[Iterable[Row], list[int] | None]:
        require(isinstance(parameters, tuple) and len(parameters) == 4, "range_descriptor is a 4-element structure")
        assert isinstance(parameters, tuple)
        restricting, from_value, to_value, selected = parameters
        try:
            restricting_object = CaptureObject.from_data(restricting)
            from_dt, to_dt = parse_time(from_value), parse_time(to_value)
            columns = [self.capture_objects.index(CaptureObject.from_data(c)) for c in _array(selected)]
        except (DlmsError, ValueError):
            require(False, "malformed range_descriptor")
            raise  # pragma: no cover - require raised
        require(restricting_object in self.capture_objects and restricting_object.is_clock, "restrict by the clock")
        return self.source.rows(from_dt, to_dt), columns or None

    def _by_entry(self, parameters: Value) -> tuple[Iterable[Row], list[int] | None]:
        require(isinstance(parameters, tuple) and len(parameters) == 4, "entry_descriptor is a 4-element structure")
        assert isinstance(parameters, tuple)
        from_entry, to_entry, from_value, to_value = (as_int(p, 0, 0xFFFFFFFF, "entry_descriptor") for p in parameters)
        in_use, width = self.source.entries_in_use(), len(self.capture_objects)
        last = in_use if to_entry == 0 else min(to_entry, in_use)
        first = max(from_entry, 1)
        last_column = width if to_value == 0 else min(to_value, width)
        columns = list(range(max(from_value, 1) - 1, last_column))
        rows: Iterable[Row] = self.source.entries(first, last) if first <= last else ()
        return rows, None if len(columns) == width else columns

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        operation = getattr(self.source, "reset" if method == 1 else "capture_now", None)
        require(callable(operation), "this profile's source does not support the method")
        assert callable(operation)
        operation()
        return None


def _values(row: Row) -> Sequence[Value]:
    """A row as values (decoding a pre-encoded one)."""
    if isinstance(row, EncodedData):
        decoded = decode_all(row)
        if not isinstance(decoded, tuple):
            raise DlmsError("a pre-encoded profile row is not a structure")
        return decoded
    return row


def _array(value: Value) -> list[Value]:
    if not isinstance(value, list):
        raise DlmsError("selected_values is not an array")
    return value
