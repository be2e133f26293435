"""Profile buffers to typed rows: the struct fast path gives exactly what the general decoder gives."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openami.protocols.dlms import axdr
from openami.protocols.dlms.axdr import (
    Array,
    DoubleLong,
    DoubleLongUnsigned,
    Enum,
    Float64,
    Integer,
    Long,
    Long64Unsigned,
    LongUnsigned,
    Structure,
    Unsigned,
)
from openami.protocols.dlms.connection import EncodedData
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.profile_rows import ProfileRow, decode_profile_rows
from openami.sim.meter_profile import encode_row, encode_rows

START = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
NUMBERS = st.one_of(
    st.integers(0, 2**32 - 1).map(DoubleLongUnsigned),
    st.integers(-(2**31), 2**31 - 1).map(DoubleLong),
    st.integers(0, 255).map(Unsigned),
    st.integers(-128, 127).map(Integer),
    st.integers(-(2**15), 2**15 - 1).map(Long),
    st.integers(0, 2**16 - 1).map(LongUnsigned),
    st.integers(0, 2**64 - 1).map(Long64Unsigned),
    st.integers(0, 255).map(Enum),
    st.booleans(),
    st.floats(allow_nan=False).map(Float64),
)


def _buffer(rows: list[tuple]) -> EncodedData:
    return EncodedData(axdr.encode(Array(Structure(row) for row in rows)))


def _both(raw: EncodedData, clock_index: int = 0) -> list[ProfileRow]:
    fast = decode_profile_rows(raw, clock_index)
    assert fast == decode_profile_rows(axdr.decode_all(raw), clock_index)
    return fast


@settings(max_examples=60, deadline=None)
@given(
    columns=st.lists(NUMBERS, min_size=0, max_size=5),
    count=st.integers(0, 40),
    deviation=st.sampled_from([0, -60, 120, None]),
)
def test_fast_path_equals_general_decoder(columns: list, count: int, deviation: int | None) -> None:
    rows = []
    for i in range(count):
        at = CosemDateTime.from_datetime(START + timedelta(minutes=15 * i), 0 if deviation is None else deviation)
        if deviation is None:
            at = CosemDateTime(*(getattr(at, f) for f in ("year", "month", "day", "weekday", "hour", "minute",
                                                          "second", "hundredths")), None, 0)  # fmt: skip
        rows.append((at.to_bytes(), *columns))
    decoded = _both(_buffer(rows))
    assert [r.clock for r in decoded] == [START + timedelta(minutes=15 * i) for i in range(count)]
    assert all(r.values == tuple(columns) for r in decoded)
    assert all(type(v) is type(c) for r in decoded for v, c in zip(r.values, columns, strict=True))


def test_simulated_meter_rows_decode_to_cumulative_registers() -> None:
    end = int(START.timestamp())
    raw = EncodedData(b"\x01\x03" + b"".join(encode_row(end + 900 * i, 1000 + i, 7, 0) for i in range(3)))
    rows = _both(raw)
    assert rows[2] == ProfileRow(
        START + timedelta(minutes=30), (DoubleLongUnsigned(1002), DoubleLongUnsigned(7), Unsigned(0))
    )


@settings(max_examples=30, deadline=None)
@given(
    first=st.integers(0, 4000),
    count=st.integers(0, 200),
    imported=st.integers(0, 2**33),
    step=st.integers(0, 2**20),
)
def test_simulated_rows_encoded_in_one_go_equal_row_by_row(first: int, count: int, imported: int, step: int) -> None:
    ends = range(1767225600 + 900 * first, 1767225600 + 900 * (first + count), 900)
    imports = [imported + step * i for i in range(count)]
    exports = [step * i for i in range(count)]
    packed = encode_rows(ends, imports, exports)
    assert packed.data == b"".join(encode_row(end, i, e) for end, i, e in zip(ends, imports, exports, strict=True))
    assert list(packed) == [encode_row(end, i, e) for end, i, e in zip(ends, imports, exports, strict=True)]


def test_clock_in_another_column_and_date_time_type() -> None:
    rows = [(DoubleLongUnsigned(5), CosemDateTime.from_datetime(START, -60))]
    assert _both(_buffer(rows), clock_index=1) == [ProfileRow(START, (DoubleLongUnsigned(5),))]


@pytest.mark.parametrize(
    "rows",
    [
        [
            (CosemDateTime.from_datetime(START).to_bytes(), b"variable"),
            (CosemDateTime.from_datetime(START).to_bytes(), b"x"),
        ],
        [(CosemDateTime.from_datetime(START).to_bytes(), Structure((Unsigned(1),)))],
        [(CosemDateTime.from_datetime(START).to_bytes(), "text")],
        [
            (CosemDateTime.from_datetime(START).to_bytes(), Unsigned(1)),
            (CosemDateTime.from_datetime(START).to_bytes(), Long(1)),
        ],
    ],
)
def test_irregular_buffers_fall_back_to_the_general_decoder(rows: list[tuple]) -> None:
    decoded = _both(_buffer(rows))
    assert [r.values for r in decoded] == [row[1:] for row in rows]


def test_empty_buffer() -> None:
    assert _both(EncodedData(b"\x01\x00")) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01",
        b"\x01\x02\x02\x01\x09\x0c" + b"\xff" * 12,  # a clock that is all wildcards
        b"\x09\x00",
        b"\x01\x01\x11\x00",
        bytes(encode_row(1767225600, 1, 2))[:-1],
    ],
)
def test_malformed_buffers_raise_dlms_errors_only(raw: bytes) -> None:
    with pytest.raises(DlmsError):
        decode_profile_rows(EncodedData(raw))


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 200), value=st.integers(0, 255), cut=st.integers(0, 240))
def test_mutated_buffers_decode_or_raise_dlms_error(position: int, value: int, cut: int) -> None:
    raw = bytearray(b"\x01\x08" + b"".join(encode_row(1767225600 + 900 * i, 5 * i, i) for i in range(8)))
    raw[position % len(raw)] = value
    with contextlib.suppress(DlmsError):
        decode_profile_rows(EncodedData(bytes(raw[: len(raw) - cut % 20])))
