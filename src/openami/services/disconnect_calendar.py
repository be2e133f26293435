"""The disconnect calendar: when a non-payment disconnect is not allowed (issue 5, seed 001).

Four kinds of entry, each optionally limited to one area (substation):

- ``hours``: a daily window of local time (``start_minute`` ≤ t < ``end_minute``; a window whose end
  is before its start wraps past midnight, e.g. 16:00-08:00);
- ``weekday``: a local day of the week (0 Monday .. 6 Sunday): weekends are two entries;
- ``holiday``: a local date;
- ``moratorium``: an interval of time [``starts_at``, ``ends_at``) (weather: heat, cold, storms).

``refusal`` is the pure rule (unit-tested); a refusal names the rule and the entry. Local time is
``GuardSettings.timezone``. The calendar applies to non-payment disconnects only: move-out, load
shedding and an operator's own disconnect are not held back by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from openami.db.tables import disconnect_calendar as cal
from openami.db.tables import substations
from openami.errors import Conflict, InvalidInput, NotFound
from openami.security import audit
from openami.security.audit import AuditEntry
from openami.security.policy import RequestScope, Resource, authorize

__all__ = ["KINDS", "CalendarEntry", "CalendarRefused", "add_entry", "entries", "list_entries", "refusal",
           "remove_entry", "zone"]  # fmt: skip

KINDS = ("hours", "weekday", "holiday", "moratorium")
ACTION = "calendar.manage"
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class CalendarRefused(Conflict):
    """A non-payment disconnect at a time the calendar forbids; the message names the rule and entry."""

    code = "disconnect-calendar"


@dataclass(frozen=True, slots=True)
class CalendarEntry:
    id: int
    kind: str
    area: str | None
    reason: str
    start_minute: int | None = None
    end_minute: int | None = None
    weekday: int | None = None
    day: date | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    created_by: str = ""
    created_at: datetime | None = None

    def describe(self) -> str:
        """The rule in words, e.g. "no-disconnect hours 16:00-08:00"."""
        if self.kind == "hours":
            return f"no-disconnect hours {_hhmm(self.start_minute)}-{_hhmm(self.end_minute)}"
        if self.kind == "weekday":
            return f"no disconnects on {_DAYS[self.weekday or 0]}s"
        if self.kind == "holiday":
            return f"holiday {self.day}"
        until = "" if self.ends_at is None else self.ends_at.isoformat(timespec="minutes")
        return f"moratorium until {until}"


def _hhmm(minute: int | None) -> str:
    m = minute or 0
    return f"{m // 60:02d}:{m % 60:02d}"


def zone(name: str) -> ZoneInfo:
    """The calendar's time zone; InvalidInput for an unknown name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"unknown time zone {name[:64]!r}") from exc


def _applies(entry: CalendarEntry, at: datetime, local: datetime) -> bool:
    if entry.kind == "hours" and entry.start_minute is not None and entry.end_minute is not None:
        minute = local.hour * 60 + local.minute
        start, end = entry.start_minute, entry.end_minute
        return start <= minute < end if start < end else (minute >= start or minute < end)
    if entry.kind == "weekday":
        return local.weekday() == entry.weekday
    if entry.kind == "holiday":
        return local.date() == entry.day
    if entry.kind == "moratorium" and entry.starts_at is not None and entry.ends_at is not None:
        return entry.starts_at <= at < entry.ends_at
    return False


def refusal(calendar: Iterable[CalendarEntry], at: datetime, area: str | None, tz: ZoneInfo) -> str | None:
    """Why a non-payment disconnect at ``at`` (aware) in ``area`` is not allowed, or None when it is.

    The first matching entry by id wins; an entry for another area does not apply.
    """
    local = at.astimezone(tz)
    for entry in sorted(calendar, key=lambda e: e.id):
        if entry.area is not None and entry.area != area:
            continue
        if _applies(entry, at, local):
            where = "" if entry.area is None else f" in area {entry.area}"
            return f"{entry.describe()}{where} (calendar entry {entry.id}: {entry.reason})"
    return None


# --- storage and the service functions -----------------------------------------------------------


def _entry(row: sa.Row[Any]) -> CalendarEntry:
    m = row._mapping
    return CalendarEntry(**{k: m[k] for k in ("id", "kind", "area", "reason", "start_minute", "end_minute", "weekday",
                                              "day", "starts_at", "ends_at", "created_by", "created_at")})  # fmt: skip


def entries(conn: Connection) -> list[CalendarEntry]:
    """Every calendar entry, by id (no policy check: the workflows consult it)."""
    return [_entry(row) for row in conn.execute(sa.select(cal).order_by(cal.c.id))]


def list_entries(engine: Engine, scope: RequestScope, *, now: datetime) -> list[CalendarEntry]:
    with engine.begin() as conn:
        authorize(conn, scope, ACTION, now=now)
        return entries(conn)


def _validate(entry: CalendarEntry) -> dict[str, Any]:
    """The entry's columns; InvalidInput when the kind's fields are missing, extra or out of range."""
    if entry.kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}")
    if not entry.reason.strip() or len(entry.reason) > 255:
        raise InvalidInput("give a reason (1-255 characters)")
    fields = {"hours": ("start_minute", "end_minute"), "weekday": ("weekday",), "holiday": ("day",),
              "moratorium": ("starts_at", "ends_at")}[entry.kind]  # fmt: skip
    every = ("start_minute", "end_minute", "weekday", "day", "starts_at", "ends_at")
    values = {name: getattr(entry, name) for name in every}
    if any(values[name] is None for name in fields) or any(values[n] is not None for n in every if n not in fields):
        raise InvalidInput(f"a {entry.kind} entry takes exactly {', '.join(fields)}")
    if entry.kind == "hours" and not (0 <= values["start_minute"] < 1440 and 0 <= values["end_minute"] < 1440):
        raise InvalidInput("hours are minutes of the day, 0-1439")
    if entry.kind == "hours" and values["start_minute"] == values["end_minute"]:
        raise InvalidInput("an hours window needs different start and end")
    if entry.kind == "weekday" and not 0 <= values["weekday"] <= 6:
        raise InvalidInput("weekday is 0 (Monday) to 6 (Sunday)")
    if entry.kind == "moratorium" and not values["starts_at"] < values["ends_at"]:
        raise InvalidInput("a moratorium must end after it starts")
    return {"kind": entry.kind, "area": entry.area, "reason": entry.reason, **values}


def add_entry(engine: Engine, scope: RequestScope, entry: CalendarEntry, *, now: datetime) -> CalendarEntry:
    """Add an entry (``entry.id`` is ignored); audited. InvalidInput for a malformed one, NotFound for an
    unknown area."""
    with engine.begin() as conn:
        authorize(conn, scope, ACTION, Resource("calendar", entry.kind), now=now)
        values = _validate(entry)
        if (
            entry.area is not None
            and conn.execute(sa.select(substations.c.id).where(substations.c.id == entry.area)).first() is None
        ):
            raise NotFound(f"no area (substation) {entry.area[:32]!r}")
        new_id = conn.execute(
            sa.insert(cal).values(**values, created_by=scope.principal, created_at=now).returning(cal.c.id)
        ).scalar_one()
        added = _entry(conn.execute(sa.select(cal).where(cal.c.id == new_id)).one())
        audit.record(conn, AuditEntry(actor=scope.principal, action=ACTION, outcome="ok", resource=f"calendar:{new_id}",
                                      details={"op": "add", "rule": added.describe(), "area": entry.area,
                                               "reason": entry.reason}), now=now)  # fmt: skip
        return added


def remove_entry(engine: Engine, scope: RequestScope, entry_id: int, *, now: datetime) -> None:
    """Remove an entry; audited. NotFound for an unknown id."""
    with engine.begin() as conn:
        authorize(conn, scope, ACTION, Resource("calendar", str(entry_id)), now=now)
        row = conn.execute(sa.select(cal).where(cal.c.id == entry_id)).first()
        if row is None:
            raise NotFound(f"no calendar entry {entry_id}")
        conn.execute(sa.delete(cal).where(cal.c.id == entry_id))
        audit.record(conn, AuditEntry(actor=scope.principal, action=ACTION, outcome="ok",
                                      resource=f"calendar:{entry_id}",
                                      details={"op": "remove", "rule": _entry(row).describe()}), now=now)  # fmt: skip
