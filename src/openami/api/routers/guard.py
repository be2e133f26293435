"""The off-switch guard: batches held by the two-person rule, uncommanded-opening alarms, the
ignore-disconnects mode of an area, and the disconnect calendar.

A batch of disconnects (or limits) above the configured size waits for a second person: ``approve``
by the principal who submitted it is refused (403 ``two-person-rule``). Disconnects over the rate
limits are refused with 429 ``guard-refused``; to an area in ignore-disconnects mode with 409
``guard-ignoring-disconnects`` (those come from the command endpoints). Every decision is audited.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import disconnect_calendar as calendar
from openami.services import switch_guard as guard

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed, or the two-person rule (code two-person-rule)"),
        (404, "unknown batch, alarm, area or calendar entry"),
        (409, "already decided, not in the mode, or the area ignores disconnects"),
        (422, "invalid request"),
        (429, "a disconnect rate limit (code guard-refused)"),
    )
}
router = APIRouter(prefix="/v1", tags=["guard"], responses=_ERRORS)
BatchId = Annotated[int, Path(ge=1, le=2**62, description="a held batch's id")]
AlarmId = Annotated[int, Path(ge=1, le=2**62, description="an alarm's id")]
Area = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$", description="a substation id")]
Reason = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]


class BatchOut(BaseModel):
    id: int
    command: str
    meter_count: int
    meter_ids: list[int]
    areas: str = Field(description="the areas (substations) of its meters")
    state: str = Field(description="awaiting-approval, approved or rejected")
    requested_by: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    note: str | None = Field(description="why it was rejected")


def _batch(b: guard.Batch) -> BatchOut:
    return BatchOut(id=b.id, command=b.command, meter_count=len(b.meter_ids), meter_ids=list(b.meter_ids),
                    areas=b.areas, state=b.state, requested_by=b.requested_by, requested_at=b.requested_at,
                    decided_by=b.decided_by, decided_at=b.decided_at, note=b.note)  # fmt: skip


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class AlarmOut(BaseModel):
    id: int
    area: str
    state: str = Field(description="open or cleared")
    opened_at: datetime
    openings: int = Field(description="switch openings no authorised command explains")
    threshold: int
    window_s: int
    ignore_disconnects_sent: bool = Field(description="the guard put the area in ignore-disconnects mode")
    cleared_by: str | None
    cleared_at: datetime | None
    meter_ids: list[int] | None = Field(default=None, description="the meters that opened (single alarm only)")


def _alarm(a: guard.Alarm, meters: list[int] | None = None) -> AlarmOut:
    return AlarmOut(id=a.id, area=a.area, state=a.state, opened_at=a.opened_at, openings=a.openings,
                    threshold=a.threshold, window_s=a.window_s, ignore_disconnects_sent=a.ignore_disconnects_sent,
                    cleared_by=a.cleared_by, cleared_at=a.cleared_at, meter_ids=meters)  # fmt: skip


class AreaModeOut(BaseModel):
    area: str
    ignore_disconnects: bool
    changed_by: str
    changed_at: datetime
    reason: str
    alarm_id: int | None


class ModeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class ModeSentOut(BaseModel):
    area: str
    ignore_disconnects: bool
    meters: int = Field(description="meters the signed ON/OFF command was queued for")


@router.get("/guard/batches", response_model=list[BatchOut], summary="Batches held by the two-person rule")
def list_batches(
    platform: PlatformDep,
    scope: Scope,
    state: Annotated[Literal["awaiting-approval", "approved", "rejected"] | None, Query()] = "awaiting-approval",
) -> list[BatchOut]:
    """Held batches, newest first; by default those still awaiting a second approver (``guard.read``)."""
    return [_batch(b) for b in guard.list_batches(platform.engine, scope, state=state, now=platform.now())]


@router.get("/guard/batches/{batch_id}", response_model=BatchOut, summary="One held batch")
def get_batch(platform: PlatformDep, scope: Scope, batch_id: BatchId) -> BatchOut:
    """A held batch and its meters (``guard.read``)."""
    return _batch(guard.get_batch(platform.engine, scope, batch_id, now=platform.now()))


@router.post("/guard/batches/{batch_id}/approve", response_model=BatchOut, summary="Approve a batch (second person)")
async def approve(platform: PlatformDep, scope: Scope, batch_id: BatchId) -> BatchOut:
    """Queue the batch's commands (``commands.approve``). The principal who submitted it is refused (403,
    ``two-person-rule``); the rate limits are checked again (429)."""
    return _batch(guard.approve_batch(platform, scope, batch_id))


@router.post("/guard/batches/{batch_id}/reject", response_model=BatchOut, summary="Reject a batch")
def reject(platform: PlatformDep, scope: Scope, batch_id: BatchId, body: RejectIn) -> BatchOut:
    """Cancel the batch's commands; same rules as approve."""
    return _batch(guard.reject_batch(platform, scope, batch_id, reason=body.reason))


@router.get("/guard/alarms", response_model=list[AlarmOut], summary="Uncommanded-opening alarms")
def list_alarms(
    platform: PlatformDep, scope: Scope, state: Annotated[Literal["open", "cleared"] | None, Query()] = None
) -> list[AlarmOut]:
    """Alarms, newest first: switch openings no authorised command explains, per area (``guard.read``)."""
    return [_alarm(a) for a in guard.list_alarms(platform.engine, scope, state=state, now=platform.now())]


@router.get("/guard/alarms/{alarm_id}", response_model=AlarmOut, summary="One alarm and its meters")
def get_alarm(platform: PlatformDep, scope: Scope, alarm_id: AlarmId) -> AlarmOut:
    """An alarm and the meters whose openings it holds (``guard.read``)."""
    alarm, meters = guard.get_alarm(platform.engine, scope, alarm_id, now=platform.now())
    return _alarm(alarm, meters)


@router.get("/guard/areas", response_model=list[AreaModeOut], summary="Areas and their ignore-disconnects mode")
def list_areas(platform: PlatformDep, scope: Scope) -> list[AreaModeOut]:
    """Every area whose mode was ever set, with who set it and why (``guard.read``)."""
    modes = guard.area_modes(platform.engine, scope, now=platform.now())
    return [AreaModeOut(area=m.area, ignore_disconnects=m.ignore_disconnects, changed_by=m.changed_by,
                        changed_at=m.changed_at, reason=m.reason, alarm_id=m.alarm_id) for m in modes]  # fmt: skip


@router.post("/guard/areas/{area}/ignore-disconnects", response_model=ModeSentOut, status_code=202,
             summary="Put an area's meters in ignore-disconnects mode")  # fmt: skip
async def ignore_disconnects(platform: PlatformDep, scope: Scope, area: Area, body: ModeIn) -> ModeSentOut:
    """The guard refuses disconnects to the area from now on, and the signed IGNORE_DISCONNECTS_ON command is
    queued for each of its meters (``guard.ignore-disconnects``)."""
    sent = guard.ignore_disconnects(platform, scope, area, reason=body.reason, now=platform.now())
    return ModeSentOut(area=area, ignore_disconnects=True, meters=sent)


@router.post("/guard/areas/{area}/clear", response_model=ModeSentOut, status_code=202,
             summary="Clear an area's ignore-disconnects mode and its alarm")  # fmt: skip
async def clear(platform: PlatformDep, scope: Scope, area: Area) -> ModeSentOut:
    """Signed IGNORE_DISCONNECTS_OFF to the area's meters, and the open alarm closed (``guard.clear``)."""
    sent = guard.clear(platform, scope, area, now=platform.now())
    return ModeSentOut(area=area, ignore_disconnects=False, meters=sent)


# --- the disconnect calendar ---------------------------------------------------------------------


class CalendarEntryIn(BaseModel):
    """``hours``: start/end "HH:MM" local (wraps past midnight); ``weekday``: 0 Monday .. 6 Sunday;
    ``holiday``: a local date; ``moratorium``: starts_at/ends_at with time zone. ``area``: one substation."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["hours", "weekday", "holiday", "moratorium"]
    reason: Reason
    area: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
    start: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    weekday: int | None = Field(default=None, ge=0, le=6)
    day: date | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None

    @model_validator(mode="after")
    def _aware(self) -> CalendarEntryIn:
        for value in (self.starts_at, self.ends_at):
            if value is not None and value.utcoffset() is None:
                raise ValueError("starts_at and ends_at need a time zone")
        return self


def _minute(text: str | None) -> int | None:
    return None if text is None else int(text[:2]) * 60 + int(text[3:])


class CalendarEntryOut(BaseModel):
    id: int
    kind: str
    rule: str = Field(description="the rule in words, as refusals name it")
    area: str | None
    reason: str
    weekday: int | None
    day: date | None
    starts_at: datetime | None
    ends_at: datetime | None
    start_minute: int | None
    end_minute: int | None
    created_by: str
    created_at: datetime | None


def _entry(e: calendar.CalendarEntry) -> CalendarEntryOut:
    return CalendarEntryOut(id=e.id, kind=e.kind, rule=e.describe(), area=e.area, reason=e.reason, weekday=e.weekday,
                            day=e.day, starts_at=e.starts_at, ends_at=e.ends_at, start_minute=e.start_minute,
                            end_minute=e.end_minute, created_by=e.created_by, created_at=e.created_at)  # fmt: skip


@router.get("/calendar", response_model=list[CalendarEntryOut], tags=["calendar"],
            summary="When non-payment disconnects are not allowed")  # fmt: skip
def list_calendar(platform: PlatformDep, scope: Scope) -> list[CalendarEntryOut]:
    """Every entry, each with its rule in words (``calendar.manage``)."""
    return [_entry(e) for e in calendar.list_entries(platform.engine, scope, now=platform.now())]


@router.post("/calendar", response_model=CalendarEntryOut, status_code=201, tags=["calendar"],
             summary="Add a no-disconnect rule")  # fmt: skip
def add_calendar_entry(platform: PlatformDep, scope: Scope, body: CalendarEntryIn) -> CalendarEntryOut:
    """No-disconnect hours, a weekday, a holiday or a (weather) moratorium (``calendar.manage``)."""
    entry = calendar.CalendarEntry(0, body.kind, body.area, body.reason, start_minute=_minute(body.start),
                                   end_minute=_minute(body.end), weekday=body.weekday, day=body.day,
                                   starts_at=body.starts_at, ends_at=body.ends_at)  # fmt: skip
    return _entry(calendar.add_entry(platform.engine, scope, entry, now=platform.now()))


@router.delete("/calendar/{entry_id}", status_code=204, tags=["calendar"], summary="Remove a no-disconnect rule")
def remove_calendar_entry(
    platform: PlatformDep, scope: Scope, entry_id: Annotated[int, Path(ge=1, le=2**62)]
) -> Response:
    """Remove an entry (``calendar.manage``); audited."""
    calendar.remove_entry(platform.engine, scope, entry_id, now=platform.now())
    return Response(status_code=204)
