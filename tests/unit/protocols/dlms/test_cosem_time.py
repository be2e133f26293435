"""COSEM date/time formats (IEC 62056-6-2 clause 4.1.6.1) and the Blue Book deviation sign."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openami.protocols.dlms.cosem_time import CosemDate, CosemDateTime, CosemTime
from openami.protocols.dlms.errors import DecodeError, DlmsError, EncodeError

CET_NOON = bytes.fromhex("07e8 0301 05 0d 0000 00 ffc4 00".replace(" ", ""))


def test_deviation_sign_local_equals_utc_minus_deviation() -> None:
    # 12:00 UTC shown in Central European Time (UTC+1) is 13:00 local with deviation -60
    value = CosemDateTime.from_datetime(datetime(2024, 3, 1, 12, 0, tzinfo=UTC), deviation=-60)
    assert (value.hour, value.deviation) == (13, -60)
    assert value.to_bytes() == CET_NOON
    assert value.to_datetime() == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def test_positive_deviation_is_west_of_utc() -> None:
    value = CosemDateTime.from_datetime(datetime(2024, 3, 1, 12, 0, tzinfo=UTC), deviation=300)
    assert value.hour == 7  # UTC-05:00
    assert value.to_datetime() == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def test_from_datetime_accepts_any_aware_timezone_and_sets_weekday() -> None:
    dt = datetime(2024, 3, 3, 1, 30, tzinfo=timezone(timedelta(hours=2)))  # 2024-03-02 23:30 UTC
    value = CosemDateTime.from_datetime(dt)
    assert (value.year, value.month, value.day, value.weekday, value.hour) == (2024, 3, 2, 6, 23)
    assert value.clock_status == 0


def test_from_datetime_refuses_naive_datetimes_and_wild_deviations() -> None:
    with pytest.raises(EncodeError):
        CosemDateTime.from_datetime(datetime(2024, 1, 1))
    with pytest.raises(EncodeError):
        CosemDateTime.from_datetime(datetime(2024, 1, 1, tzinfo=UTC), deviation=721)


def test_not_specified_fields_decode_to_none_or_wildcards() -> None:
    raw = bytes.fromhex("ffff ff ff ff ff ff ff ff 8000 ff".replace(" ", ""))
    value = CosemDateTime.from_bytes(raw)
    assert value.deviation is None
    assert value.clock_status is None
    assert value.year == 0xFFFF
    assert value.to_bytes() == raw


@pytest.mark.parametrize(
    "raw",
    [
        "07e8 0301 05 0d0000 00 8000 00",  # no deviation: cannot place in UTC
        "ffff 0301 05 0d0000 00 0000 00",  # year not specified
        "07e8 fe01 05 0d0000 00 0000 00",  # month = daylight saving begin
        "07e8 0301 05 ff0000 00 0000 00",  # hour not specified
        "07e8 021e 05 0d0000 00 0000 00",  # 30 February
    ],
)
def test_to_datetime_refuses_values_that_are_not_an_instant(raw: str) -> None:
    with pytest.raises(DlmsError):
        CosemDateTime.from_bytes(bytes.fromhex(raw.replace(" ", ""))).to_datetime()


def test_hundredths_not_specified_count_as_zero() -> None:
    value = CosemDateTime(2024, 3, 1, 0xFF, 12, 0, 0, 0xFF, 0, None)
    assert value.to_datetime() == datetime(2024, 3, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cls", "size"),
    [(CosemDateTime, 0), (CosemDateTime, 11), (CosemDateTime, 13), (CosemDate, 4), (CosemDate, 6), (CosemTime, 3)],
)
def test_wrong_lengths_raise_decode_error(cls: type[CosemDateTime | CosemDate | CosemTime], size: int) -> None:
    with pytest.raises(DecodeError):
        cls.from_bytes(bytes(size))


def test_construction_checks_field_widths() -> None:
    with pytest.raises(EncodeError):
        CosemDateTime(2024, 256, 1, 1, 0, 0, 0, 0, 0, 0)
    with pytest.raises(EncodeError):
        CosemDateTime(2024, 1, 1, 1, 0, 0, 0, 0, -32768, 0)
    with pytest.raises(EncodeError):
        CosemDateTime(2024, 1, 1, 1, 0, 0, 0, 0, 0, 255)
    with pytest.raises(EncodeError):
        CosemDate(70000, 1, 1)
    with pytest.raises(EncodeError):
        CosemTime(-1, 0, 0)


def test_date_and_time_convert_to_python() -> None:
    assert CosemDate.from_date(date(2024, 3, 1)) == CosemDate(2024, 3, 1, 5)
    assert CosemDate(2024, 3, 1).to_date() == date(2024, 3, 1)
    assert CosemTime.from_time(time(13, 5, 7, 120_000)) == CosemTime(13, 5, 7, 12)
    assert CosemTime(13, 5, 7).to_time() == time(13, 5, 7)
    with pytest.raises(DlmsError):
        CosemDate(2024, 0xFF, 1).to_date()
    with pytest.raises(DlmsError):
        CosemTime(0xFF, 0, 0).to_time()


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(-720, 720),
)
def test_datetime_round_trips_to_the_hundredth(dt: datetime, deviation: int) -> None:
    value = CosemDateTime.from_datetime(dt, deviation)
    again = CosemDateTime.from_bytes(value.to_bytes())
    assert again == value
    assert again.to_datetime() == dt.replace(microsecond=dt.microsecond // 10_000 * 10_000)
