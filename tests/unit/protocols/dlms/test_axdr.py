"""A-XDR Data codec (IEC 62056-6-2 clause 4.1.5): known bytes, ranges, round trips, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms import axdr
from openami.protocols.dlms.axdr import (
    Array,
    BitString,
    CosemDate,
    CosemDateTime,
    CosemTime,
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
    Structure,
    Unsigned,
    Utf8String,
    VisibleString,
    decode,
    decode_all,
    decode_length,
    encode,
    encode_length,
)
from openami.protocols.dlms.compact import ArrayType, StructureType, decode_type_description, encode_compact_array
from openami.protocols.dlms.errors import DecodeError, EncodeError

# ------------------------------------------------------------------------------- strategies (shared)

INT_TYPES = [
    (Integer, -(2**7), 2**7 - 1),
    (Long, -(2**15), 2**15 - 1),
    (Unsigned, 0, 2**8 - 1),
    (LongUnsigned, 0, 2**16 - 1),
    (DoubleLong, -(2**31), 2**31 - 1),
    (DoubleLongUnsigned, 0, 2**32 - 1),
    (Long64, -(2**63), 2**63 - 1),
    (Long64Unsigned, 0, 2**64 - 1),
    (Enum, 0, 2**8 - 1),
]

bytes_fields = st.integers(0, 255)
date_times = st.builds(
    CosemDateTime,
    year=st.integers(0, 0xFFFF),
    month=bytes_fields,
    day=bytes_fields,
    weekday=bytes_fields,
    hour=bytes_fields,
    minute=bytes_fields,
    second=bytes_fields,
    hundredths=bytes_fields,
    deviation=st.none() | st.integers(-32767, 32767),
    clock_status=st.none() | st.integers(0, 254),
)
dates = st.builds(CosemDate, st.integers(0, 0xFFFF), bytes_fields, bytes_fields, bytes_fields)
times = st.builds(CosemTime, bytes_fields, bytes_fields, bytes_fields, bytes_fields)

scalars: st.SearchStrategy[Data] = st.one_of(
    st.none(),
    st.booleans(),
    *[st.integers(low, high).map(cls) for cls, low, high in INT_TYPES],
    st.floats(width=32, allow_nan=False).map(Float32),
    st.floats(allow_nan=False).map(Float64),
    st.binary(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=40),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20).map(Utf8String),
    st.text(alphabet="01", max_size=40).map(BitString),
    date_times,
    dates,
    times,
)
data_values: st.SearchStrategy[Data] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5).map(Array) | st.lists(children, max_size=5).map(Structure),
    max_leaves=25,
)


def assert_same(decoded: object, original: object) -> None:
    """Equal, and of the type decoding promises (list->Array, tuple->Structure, float->Float64)."""
    assert decoded == original
    expected_type = {list: Array, tuple: Structure, float: Float64, bytearray: bytes}.get(
        type(original), type(original)
    )
    if type(original) is VisibleString:
        expected_type = str
    assert type(decoded) is expected_type, (type(decoded), type(original))
    if isinstance(original, list | tuple):
        assert isinstance(decoded, list | tuple)
        for got, want in zip(decoded, original, strict=True):
            assert_same(got, want)


# ------------------------------------------------------------------------------------ known bytes


@pytest.mark.parametrize(
    ("value", "hex_bytes"),
    [
        (None, "00"),
        (True, "0301"),
        (False, "0300"),
        (Integer(-1), "0fff"),
        (Long(-2), "10fffe"),
        (Unsigned(200), "11c8"),
        (LongUnsigned(0x1234), "121234"),
        (DoubleLong(-5), "05fffffffb"),
        (DoubleLongUnsigned(0xDEADBEEF), "06deadbeef"),
        (Long64(-1), "14ffffffffffffffff"),
        (Long64Unsigned(2**64 - 1), "15ffffffffffffffff"),
        (Enum(30), "161e"),
        (Float32(1.5), "173fc00000"),
        (Float64(-2.0), "18c000000000000000"),
        (2.5, "184004000000000000"),
        (b"\x00\x00\x01\x00\x00\xff", "09060000010000ff"),
        ("ABC", "0a03414243"),
        (Utf8String("é"), "0c02c3a9"),
        (BitString("1011"), "0404b0"),
        (BitString("101100001"), "0409b080"),
        (BitString(""), "0400"),
        (CosemDate(2024, 3, 1, 5), "1a07e8030105"),
        (CosemTime(13, 0, 0, 0xFF), "1b0d0000ff"),
        (Array([Unsigned(1), Unsigned(2)]), "0102110111 02".replace(" ", "")),
        ([LongUnsigned(1)], "0101120001"),
        (Structure((Integer(-3), Enum(30))), "02020ffd161e"),
        ((), "0200"),
    ],
)
def test_known_encodings(value: Data, hex_bytes: str) -> None:
    assert encode(value).hex() == hex_bytes
    assert_same(decode_all(bytes.fromhex(hex_bytes)), value)


def test_register_scaler_unit_structure_decodes() -> None:
    # {integer scaler -3? no: 0, enum unit 30 (Wh)} as a meter sends it
    assert decode_all(bytes.fromhex("02020f00161e")) == Structure((Integer(0), Enum(30)))


def test_date_time_tag_25_is_twelve_bytes_without_length() -> None:
    value = CosemDateTime(2024, 3, 1, 5, 13, 0, 0, 0, -60, 0)
    assert encode(value) == bytes.fromhex("19 07e8 03 01 05 0d 00 00 00 ffc4 00")
    assert decode_all(encode(value)) == value


@pytest.mark.parametrize(
    ("length", "hex_bytes"),
    [(0, "00"), (127, "7f"), (128, "8180"), (255, "81ff"), (256, "820100"), (70000, "83011170")],
)
def test_length_uses_short_form_below_128_and_0x80_or_n_above(length: int, hex_bytes: str) -> None:
    assert encode_length(length).hex() == hex_bytes
    assert decode_length(bytes.fromhex(hex_bytes), 0) == (length, len(hex_bytes) // 2)


def test_long_octet_string_uses_long_form_length() -> None:
    encoded = encode(b"x" * 200)
    assert encoded[:3] == b"\x09\x81\xc8"
    assert decode_all(encoded) == b"x" * 200


def test_decode_length_rejects_indefinite_and_oversized_forms() -> None:
    with pytest.raises(DecodeError):
        decode_length(b"\x80", 0)
    with pytest.raises(DecodeError):
        decode_length(b"\x85\x01\x02\x03\x04\x05", 0)
    with pytest.raises(DecodeError):
        decode_length(b"\x82\x01", 0)


# ------------------------------------------------------------------------------- types and ranges


@pytest.mark.parametrize(("cls", "low", "high"), INT_TYPES)
def test_integer_types_check_their_range_on_construction(cls: type[int], low: int, high: int) -> None:
    assert cls(low) == low
    assert cls(high) == high
    with pytest.raises(EncodeError):
        cls(low - 1)
    with pytest.raises(EncodeError):
        cls(high + 1)


def test_integer_types_refuse_non_integers() -> None:
    with pytest.raises(EncodeError):
        Unsigned(1.5)  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        Long("12")  # type: ignore[arg-type]


def test_plain_int_is_refused_with_the_widths_named() -> None:
    with pytest.raises(EncodeError, match="LongUnsigned"):
        encode(5)


def test_unencodable_values_raise_encode_error() -> None:
    with pytest.raises(EncodeError):
        encode(object())  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode("é")
    with pytest.raises(EncodeError):
        VisibleString("é")
    with pytest.raises(EncodeError):
        encode(Utf8String("\ud800"))
    with pytest.raises(EncodeError):
        BitString("102")
    with pytest.raises(EncodeError):
        Float32(1e40)


def test_nesting_deeper_than_the_limit_is_refused_both_ways() -> None:
    deep: Data = Unsigned(1)
    for _ in range(axdr.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(EncodeError):
        encode(deep)
    with pytest.raises(DecodeError, match="nested"):
        decode(b"\x01\x01" * (axdr.MAX_DEPTH + 1) + b"\x00")


def test_subclasses_encode_like_their_base() -> None:
    class Reading(tuple[Data, ...]):
        pass

    class Counter(DoubleLongUnsigned):
        pass

    assert encode(Reading((Counter(1),))) == encode(Structure((DoubleLongUnsigned(1),)))


def test_float32_rounds_to_single_precision_so_it_round_trips() -> None:
    value = Float32(0.1)
    assert value != 0.1
    assert_same(decode_all(encode(value)), value)


def test_reprs_name_the_type() -> None:
    assert repr(Unsigned(3)) == "Unsigned(3)"
    assert repr(Array([Enum(1)])) == "Array([Enum(1)])"


# --------------------------------------------------------------------------------- round trips


@given(data_values)
def test_every_data_type_round_trips_with_its_type(value: Data) -> None:
    encoded = encode(value)
    decoded, end = decode(encoded)
    assert end == len(encoded)
    assert_same(decoded, value)


@given(data_values, st.binary(max_size=8), st.binary(max_size=8))
def test_decode_at_offset_returns_the_next_offset(value: Data, before: bytes, after: bytes) -> None:
    buf = before + encode(value) + after
    decoded, end = decode(memoryview(buf), len(before))
    assert decoded == value
    assert end == len(buf) - len(after)


@given(st.integers(0, 2**32 - 1))
def test_length_round_trips(n: int) -> None:
    assert decode_length(encode_length(n), 0) == (n, len(encode_length(n)))


# ------------------------------------------------------------------------------------ malformed


@pytest.mark.parametrize(
    "hex_bytes",
    ["", "ff", "07", "06000000", "0905414243", "01", "0103", "0202 11", "0a02c3a9", "0c01ff", "1907e8", "0409ff"],
)
def test_malformed_input_raises_decode_error_with_offset(hex_bytes: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(bytes.fromhex(hex_bytes.replace(" ", "")))
    assert caught.value.offset >= 0
    assert caught.value.expected


def test_decode_all_rejects_trailing_bytes() -> None:
    with pytest.raises(DecodeError, match="trailing") as caught:
        decode_all(b"\x11\x01\x00")
    assert caught.value.offset == 2


# ------------------------------------------------------------------------------- compact-array


def test_compact_array_of_structures_decodes_to_array_of_structures() -> None:
    # type description: structure of {double-long-unsigned, long}; contents without tags
    raw = bytes.fromhex("13 02 02 06 10 0c 00000001 0002 00000003 0004".replace(" ", ""))
    assert decode_all(raw) == Array(
        [Structure((DoubleLongUnsigned(1), Long(2))), Structure((DoubleLongUnsigned(3), Long(4)))]
    )


def test_compact_array_with_nested_array_and_strings() -> None:
    description = StructureType((ArrayType(2, 17), 9))
    values = [([Unsigned(1), Unsigned(2)], b"ab"), ([Unsigned(3), Unsigned(4)], b"")]
    encoded = encode_compact_array(values, description)
    assert decode_type_description(encoded, 1)[0] == description
    decoded = decode_all(encoded)
    assert decoded == [(Array([Unsigned(1), Unsigned(2)]), b"ab"), (Array([Unsigned(3), Unsigned(4)]), b"")]


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(-(2**15), 2**15 - 1), st.binary(max_size=12))))
def test_compact_array_round_trips(rows: list[tuple[int, int, bytes]]) -> None:
    values = [Structure((DoubleLongUnsigned(a), Long(b), c)) for a, b, c in rows]
    decoded = decode_all(encode_compact_array(values, StructureType((6, 16, 9))))
    assert decoded == values
    assert all(type(row) is Structure for row in decoded)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "hex_bytes",
    [
        "13 00 01 00",  # null-data elements have no size
        "13 02 00 01 00",  # empty structure elements have no size
        "13 01 00",  # array type description without its count and element
        "13 13 00",  # compact-array inside a type description
        "13 06 03 000000",  # contents not a whole number of elements
        "13 06 08 00000001",  # contents length beyond the buffer
        "13 ee 00",  # unknown type tag
    ],
)
def test_malformed_compact_arrays_raise_decode_error(hex_bytes: str) -> None:
    with pytest.raises(DecodeError):
        decode_all(bytes.fromhex(hex_bytes.replace(" ", "")))


def test_compact_array_encoder_checks_values_against_the_description() -> None:
    with pytest.raises(EncodeError):
        encode_compact_array([Unsigned(1)], 6)
    with pytest.raises(EncodeError):
        encode_compact_array([(Unsigned(1),)], StructureType((17, 17)))
