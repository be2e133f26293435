"""Profile Generic buffers (Blue Book 4.3.6, attribute 2) decoded into typed rows, fast.

A load profile is an array of structures that all have the same shape (a date-time octet-string,
then fixed-size numbers), and a head-end decodes millions of them. :func:`decode_profile_rows`
learns the shape from the first row, then reads every row with one ``struct`` call, checking that
each row has exactly the tags and lengths of the first; a buffer that does not fit (variable sizes,
nested data, long lengths) is decoded by the general A-XDR decoder instead. Both ways give the same
rows, and malformed input raises DlmsError only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple

from openami.protocols.dlms.axdr import (
    Data,
    DoubleLong,
    DoubleLongUnsigned,
    Enum,
    Float32,
    Float64,
    Integer,
    Long,
    Long64,
    Long64Unsigned,
    LongUnsigned,
    Unsigned,
    decode_all,
    decode_length,
)
from openami.protocols.dlms.connection import EncodedData
from openami.protocols.dlms.cosem.profile import parse_time
from openami.protocols.dlms.errors import DecodeError, DlmsError, ProtocolStateError

__all__ = ["ProfileRow", "decode_profile_rows"]

_new_tuple = tuple.__new__


class ProfileRow(NamedTuple):
    """One profile capture: its clock as an aware UTC datetime, then the other columns in order."""

    clock: datetime
    values: tuple[Data, ...]


def _fixed(cls: type[int] | type[float]) -> Callable[[Any], Data]:
    """Build the typed value without re-checking its range (``struct`` already bounds it).

    A ``partial`` of the base type's ``__new__`` is called from C by ``map``: no Python frame per value.
    """
    base: Any = int if issubclass(cls, int) else float
    return partial(base.__new__, cls)


def _table(cls: type[int], signed: bool = False) -> Callable[[Any], Data]:
    """One-byte types come from a prebuilt table (a lookup, no object built): ``table[value]``."""
    values = range(-128, 128) if signed else range(256)
    table = dict(zip(values, map(partial(int.__new__, cls), values), strict=True))
    return table.__getitem__


# tag -> (struct code, converter from the unpacked number to the typed value)
_FIXED: dict[int, tuple[str, Callable[[Any], Data]]] = {
    3: ("B", bool),
    5: ("i", _fixed(DoubleLong)),
    6: ("I", _fixed(DoubleLongUnsigned)),
    15: ("b", _table(Integer, signed=True)),
    16: ("h", _fixed(Long)),
    17: ("B", _table(Unsigned)),
    18: ("H", _fixed(LongUnsigned)),
    20: ("q", _fixed(Long64)),
    21: ("Q", _fixed(Long64Unsigned)),
    22: ("B", _table(Enum)),
    23: ("f", _fixed(Float32)),
    24: ("d", _fixed(Float64)),
}
_OCTET_STRING = 9
_STRUCTURE = 2
_ARRAY = 1
_DATE_TIME = 25
_DATE_TIME_FORMAT = "HBBBBBBBhB"
_NOT_SPECIFIED_DEVIATION = -0x8000


class _Layout:
    """The struct of one row and where its tags, values and clock fields are."""

    def __init__(self, buf: bytes, pos: int, clock_index: int) -> None:
        if buf[pos] != _STRUCTURE or buf[pos + 1] >= 0x80:
            raise LookupError("not a short structure")
        width = buf[pos + 1]
        fmt: list[str] = [">BB"]
        checks = [(0, _STRUCTURE), (1, width)]
        values: list[int] = []
        converters: list[Callable[[Any], Data] | None] = []
        field, p = 2, pos + 2
        self.clock_fields = -1
        for column in range(width):
            tag = buf[p]
            if tag in _FIXED:
                code, convert = _FIXED[tag]
                fmt.append("B" + code)
                checks.append((field, tag))
                values.append(field + 1)
                converters.append(convert)
                field, p = field + 2, p + 1 + struct.calcsize(">" + code)
            elif tag == _OCTET_STRING and column == clock_index and buf[p + 1] == 12:
                fmt.append("BB" + _DATE_TIME_FORMAT)
                checks += [(field, tag), (field + 1, 12)]
                self.clock_fields = field + 2
                field, p = field + 12, p + 14
            elif tag == _DATE_TIME and column == clock_index:
                fmt.append("B" + _DATE_TIME_FORMAT)
                checks.append((field, tag))
                self.clock_fields = field + 1
                field, p = field + 11, p + 13
            elif tag == _OCTET_STRING and buf[p + 1] < 0x80:
                size = buf[p + 1]
                fmt.append(f"BB{size}s")
                checks += [(field, tag), (field + 1, size)]
                values.append(field + 2)
                converters.append(None)  # struct already gives bytes
                field, p = field + 3, p + 2 + size
            else:
                raise LookupError("a column that is not of fixed size")
        if self.clock_fields < 0:
            raise LookupError("no date-time clock column")
        self.struct = struct.Struct("".join(fmt))
        self.checked = tuple(i for i, _ in checks)
        self.expected = tuple(v for _, v in checks)
        self.values = tuple(values)
        self.converters = tuple(converters)


def _clock(fields: Sequence[int]) -> datetime:
    """UTC from date-time fields (Blue Book: UTC = local + deviation; unspecified deviation = UTC)."""
    year, month, day, _, hour, minute, second, hundredths, deviation, _ = fields
    at = datetime(year, month, day, hour, minute, second, 0 if hundredths == 0xFF else hundredths * 10_000, UTC)
    if deviation and deviation != _NOT_SPECIFIED_DEVIATION:
        at += timedelta(minutes=deviation)
    return at


def _fast(raw: bytes, clock_index: int) -> list[ProfileRow] | None:
    """Rows by the learnt struct, or None when the buffer does not have one fixed shape.

    Column-wise: one ``iter_unpack`` over the buffer, one transposition, then each column is checked
    (``count``) and converted (``map`` of a C-level constructor) as a whole, so no Python code runs
    per value; only rows whose clocks need per-row care (deviation, unspecified hundredths mixed
    with others) go through :func:`_clock` one by one.
    """
    if len(raw) < 2 or raw[0] != _ARRAY:
        return None
    count, pos = decode_length(raw, 1)
    if count == 0:
        return [] if pos == len(raw) else None
    try:
        layout = _Layout(raw, pos, clock_index)
    except (LookupError, IndexError, struct.error):
        return None
    if pos + count * layout.struct.size != len(raw):
        return None
    columns = list(zip(*layout.struct.iter_unpack(memoryview(raw)[pos:]), strict=True))
    for field, expected in zip(layout.checked, layout.expected, strict=True):
        if columns[field].count(expected) != count:
            return None
    try:
        clocks = _clocks(columns[layout.clock_fields : layout.clock_fields + 10], count)
    except (ValueError, OverflowError):
        return None  # a date-time the fast path cannot place: let the general path say why
    values = [
        column if convert is None else list(map(convert, column))
        for column, convert in zip((columns[i] for i in layout.values), layout.converters, strict=True)
    ]
    rows = zip(clocks, zip(*values, strict=True) if values else repeat((), count), strict=True)
    return list(map(_new_tuple, repeat(ProfileRow, count), rows))


def _clocks(fields: list[tuple[int, ...]], count: int) -> list[datetime]:
    """The clock column as UTC datetimes, from the date-time fields one column each."""
    year, month, day, _, hour, minute, second, hundredths, deviation, _ = fields
    plain_deviation = deviation.count(0) + deviation.count(_NOT_SPECIFIED_DEVIATION) == count
    if plain_deviation and hundredths.count(0) == count:
        return list(map(datetime, year, month, day, hour, minute, second, repeat(0, count), repeat(UTC, count)))
    return [_clock(row) for row in zip(*fields, strict=True)]


def decode_profile_rows(buffer: Data | EncodedData, clock_index: int = 0) -> list[ProfileRow]:
    """A profile buffer (decoded, or still encoded) as typed rows; DlmsError when malformed.

    ``clock_index`` is the position of the date-time column in capture_objects.
    """
    if isinstance(buffer, EncodedData):
        fast = _fast(bytes(buffer), clock_index)
        if fast is not None:
            return fast
        buffer = decode_all(buffer)
    if not isinstance(buffer, list):
        raise ProtocolStateError("the profile buffer is not an array")
    rows: list[ProfileRow] = []
    for row in buffer:
        if not isinstance(row, tuple) or len(row) <= clock_index:
            raise ProtocolStateError("a profile row is not a structure with a clock")
        try:
            clock = parse_time(row[clock_index])
        except DecodeError:
            raise
        except DlmsError as exc:
            raise ProtocolStateError(f"a profile row's clock is not usable: {exc}") from None
        rows.append(ProfileRow(clock, row[:clock_index] + row[clock_index + 1 :]))
    return rows
