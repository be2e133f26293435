"""The disconnect calendar's rules and the uncommanded-opening rule, as pure functions."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from openami.domain.meter_events import EventCode, MeterEvent
from openami.errors import InvalidInput
from openami.services.disconnect_calendar import CalendarEntry, _validate, refusal, zone
from openami.services.switch_guard import is_uncommanded

UTC_ZONE = zone("UTC")
BERLIN = zone("Europe/Berlin")
WEDNESDAY_NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def hours(start: str, end: str, entry_id: int = 1, area: str | None = None) -> CalendarEntry:
    def minute(text: str) -> int:
        h, m = text.split(":")
        return int(h) * 60 + int(m)

    return CalendarEntry(entry_id, "hours", area, "evening", start_minute=minute(start), end_minute=minute(end))


@pytest.mark.parametrize(
    ("at", "refused"),
    [
        (datetime(2026, 11, 25, 15, 59, tzinfo=UTC), False),
        (datetime(2026, 11, 25, 16, 0, tzinfo=UTC), True),
        (datetime(2026, 11, 25, 23, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 26, 0, 0, tzinfo=UTC), True),
        (datetime(2026, 11, 26, 7, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 26, 8, 0, tzinfo=UTC), False),
    ],
)
def test_no_disconnect_hours_wrap_past_midnight(at: datetime, refused: bool) -> None:
    why = refusal([hours("16:00", "08:00")], at, None, UTC_ZONE)
    assert (why is not None) == refused
    if refused:
        assert why == "no-disconnect hours 16:00-08:00 (calendar entry 1: evening)"


def test_hours_are_local_time() -> None:
    window = [hours("12:00", "14:00")]  # local: Berlin is UTC+1 in November
    assert refusal(window, datetime(2026, 11, 25, 11, 30, tzinfo=UTC), None, BERLIN) is not None
    assert refusal(window, datetime(2026, 11, 25, 13, 30, tzinfo=UTC), None, BERLIN) is None


def test_weekend_holiday_and_moratorium_each_name_their_rule() -> None:
    calendar = [
        CalendarEntry(1, "weekday", None, "weekend", weekday=5),
        CalendarEntry(2, "weekday", None, "weekend", weekday=6),
        CalendarEntry(3, "holiday", None, "Christmas", day=date(2026, 12, 25)),
        CalendarEntry(
            4, "moratorium", "S1", "heat wave", starts_at=WEDNESDAY_NOON, ends_at=datetime(2026, 11, 27, tzinfo=UTC)
        ),
    ]
    saturday = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert refusal(calendar, saturday, None, UTC_ZONE) == "no disconnects on Saturdays (calendar entry 1: weekend)"
    christmas = datetime(2026, 12, 25, 10, 0, tzinfo=UTC)  # a Friday
    assert refusal(calendar, christmas, None, UTC_ZONE) == "holiday 2026-12-25 (calendar entry 3: Christmas)"
    assert refusal(calendar, WEDNESDAY_NOON, "S1", UTC_ZONE) == (
        "moratorium until 2026-11-27T00:00+00:00 in area S1 (calendar entry 4: heat wave)"
    )
    assert refusal(calendar, WEDNESDAY_NOON, "S2", UTC_ZONE) is None  # the moratorium is S1's only
    assert refusal(calendar, datetime(2026, 11, 27, 0, 0, tzinfo=UTC), "S1", UTC_ZONE) is None  # it has ended


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (CalendarEntry(0, "hours", None, "x", start_minute=600), "exactly start_minute, end_minute"),
        (CalendarEntry(0, "hours", None, "x", start_minute=600, end_minute=600), "different start and end"),
        (CalendarEntry(0, "hours", None, "x", start_minute=600, end_minute=1440), "0-1439"),
        (CalendarEntry(0, "weekday", None, "x", weekday=7), "0 \\(Monday\\) to 6"),
        (CalendarEntry(0, "holiday", None, "x", day=date(2026, 1, 1), weekday=1), "exactly day"),
        (CalendarEntry(0, "moratorium", None, "x", starts_at=WEDNESDAY_NOON, ends_at=WEDNESDAY_NOON), "end after"),
        (CalendarEntry(0, "sometimes", None, "x"), "kind must be one of"),
        (CalendarEntry(0, "weekday", None, " ", weekday=1), "give a reason"),
    ],
)
def test_malformed_calendar_entries_are_refused(entry: CalendarEntry, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        _validate(entry)


def test_unknown_time_zone_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown time zone"):
        zone("Mars/Olympus_Mons")


@pytest.mark.parametrize(
    ("code", "value", "explains", "uncommanded"),
    [
        (EventCode.SWITCH_OPENED, None, False, True),  # no command caused it
        (EventCode.SWITCH_OPENED, 17.0, False, True),  # a counter that is no disconnect/limit to this meter
        (EventCode.SWITCH_OPENED, 17.0, True, False),  # explained by its command
        (EventCode.SWITCH_CLOSED, None, False, False),  # closing is not an opening
        (EventCode.LIMITER_TRIPPED, 5000.0, False, False),
    ],
)
def test_uncommanded_opening_rule(code: EventCode, value: float | None, explains: bool, uncommanded: bool) -> None:
    event = MeterEvent(meter_id=1, code=code, meter_time=0, received_at=0.0, source="push", value=value)
    assert is_uncommanded(event, explains) is uncommanded
