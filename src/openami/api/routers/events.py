"""Meter events and alarms: last gasps, restorations, tamper, voltage, switch (docs/events.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import events as event_services

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed"),
        (404, "unknown meter"),
        (422, "invalid filter"),
    )
}
router = APIRouter(prefix="/v1", tags=["events"], responses=_ERRORS)


class EventOut(BaseModel):
    """One meter event, stored once however many times it arrived."""

    id: int
    meter_id: int
    code: str = Field(description="event name, e.g. 'power-down' (last gasp), 'cover-opened'")
    code_number: int = Field(description="openami's event code (openami.domain.meter_events.EventCode)")
    category: str = Field(description="power, voltage, tamper, switch, clock, comms or security")
    meter_time: datetime = Field(description="when the meter recorded it (its own clock)")
    received_at: datetime = Field(description="when the head-end first received it")
    source: str = Field(description="'push' (a notification) or 'log' (read from the meter's event log)")
    value: float | None = Field(description="measured voltage (V), demand (W), command counter, ... or null")


CodeFilter = Annotated[
    list[str] | None, Query(description="event names or numbers, e.g. code=power-down&code=power-up")
]
CategoryFilter = Annotated[list[str] | None, Query(description="categories, e.g. category=tamper")]
Since = Annotated[datetime | None, Query(description="meter time from (inclusive), ISO 8601 with time zone")]
Until = Annotated[datetime | None, Query(description="meter time to (inclusive), ISO 8601 with time zone")]
Limit = Annotated[int, Query(ge=1, le=event_services.MAX_LIMIT)]


def _events(  # noqa: PLR0913 - the filters
    platform: PlatformDep,
    scope: Scope,
    *,
    meter_id: int | None,
    code: list[str] | None,
    category: list[str] | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[EventOut]:
    views = event_services.list_events(
        platform.engine,
        scope,
        meter_id=meter_id,
        codes=event_services.parse_codes(code or []),
        categories=event_services.parse_categories(category or []),
        since=since,
        until=until,
        limit=limit,
        now=platform.now(),
    )
    return [EventOut.model_validate(v, from_attributes=True) for v in views]


@router.get("/events", response_model=list[EventOut], summary="List meter events")
def list_events(  # noqa: PLR0913, PLR0917 - one parameter per query parameter
    platform: PlatformDep,
    scope: Scope,
    meter_id: Annotated[int | None, Query(ge=1)] = None,
    code: CodeFilter = None,
    category: CategoryFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
) -> list[EventOut]:
    """Events of the meters the caller may see, newest meter time first."""
    return _events(
        platform, scope, meter_id=meter_id, code=code, category=category, since=since, until=until, limit=limit
    )


@router.get("/meters/{meter_id}/events", response_model=list[EventOut], summary="List one meter's events")
def meter_events(  # noqa: PLR0913, PLR0917 - one parameter per query parameter
    platform: PlatformDep,
    scope: Scope,
    meter_id: Annotated[int, Path(ge=1, description="the platform's meter id")],
    code: CodeFilter = None,
    category: CategoryFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 100,
) -> list[EventOut]:
    """One meter's events, newest meter time first (404 when unknown or outside the caller's scope)."""
    return _events(
        platform, scope, meter_id=meter_id, code=code, category=category, since=since, until=until, limit=limit
    )
