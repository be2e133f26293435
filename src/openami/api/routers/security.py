"""Audit log, security events and alerts.

Every filter is validated before it reaches a query (lengths, characters, ranges) and an unknown or
repeated query parameter is refused: a request the API does not understand is a 422, never guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.errors import InvalidInput
from openami.services import security as security_services

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in ((401, "missing or invalid token"), (403, "not allowed"), (422, "invalid filter"))
}
router = APIRouter(prefix="/v1", tags=["security"], responses=_ERRORS)

_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
_DOTTED = r"^[a-z0-9][a-z0-9._-]*$"
MAX_ID = 2**62
Limit = Annotated[int, Query(ge=1, le=security_services.MAX_PAGE)]
Since = Annotated[datetime | None, Query(description="ISO 8601 with time zone, inclusive")]
Until = Annotated[datetime | None, Query(description="ISO 8601 with time zone, inclusive")]
MeterId = Annotated[int | None, Query(ge=1, le=2**31 - 1, description="entries about meter:N")]
Actor = Annotated[str | None, Query(min_length=1, max_length=128, pattern=_PRINTABLE)]


def _only(*names: str) -> Callable[..., None]:
    """A dependency refusing query parameters other than ``names``, and any given twice."""
    allowed = frozenset(names)

    def check(request: Request, _scope: Scope) -> None:  # after authentication: a stranger learns nothing
        keys = [key for key, _ in request.query_params.multi_items()]
        unknown = sorted(set(keys) - allowed)
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(k[:32] for k in unknown[:5])}")
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise InvalidInput(f"query parameter(s) given more than once: {', '.join(repeated)}")

    return check


class AuditEntryOut(BaseModel):
    seq: int
    at: datetime
    actor: str
    action: str
    outcome: str
    resource: str | None
    subject: str | None
    purpose: str | None
    details: dict[str, Any]
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_before_seq: int | None


class SecurityEventOut(BaseModel):
    id: int
    kind: str
    occurred_at: datetime
    meter_id: int | None
    actor: str | None
    details: dict[str, Any]
    audit_seq: int
    alert_id: int | None


class EventPage(BaseModel):
    items: list[SecurityEventOut]
    next_before_id: int | None


class AlertOut(BaseModel):
    id: int
    kind: str
    scope: str
    state: str
    opened_at: datetime
    last_event_at: datetime
    event_count: int
    threshold: int
    window_s: int
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    closed_by: str | None
    closed_at: datetime | None


_AUDIT_PARAMS = ("actor", "action", "outcome", "meter_id", "subject", "since", "until", "before_seq", "limit")


@router.get("/audit", response_model=AuditPage, dependencies=[Depends(_only(*_AUDIT_PARAMS))])
def audit_log(  # noqa: PLR0913 - one parameter per filter
    *,
    platform: PlatformDep,
    scope: Scope,
    actor: Actor = None,
    action: Annotated[str | None, Query(min_length=1, max_length=64, pattern=_DOTTED)] = None,
    outcome: Literal["ok", "denied", "failed"] | None = None,
    meter_id: MeterId = None,
    subject: Actor = None,
    since: Since = None,
    until: Until = None,
    before_seq: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Limit = 100,
) -> AuditPage:
    """Audit entries, newest first; page with ``before_seq`` = ``next_before_seq``. Needs ``audit.read``."""
    records = security_services.audit_entries(
        platform.engine, scope, actor=actor, action=action, outcome=outcome, meter_id=meter_id, subject=subject,
        since=since, until=until, before_seq=before_seq, limit=limit, now=platform.now(),
    )  # fmt: skip
    return AuditPage(
        items=[AuditEntryOut.model_validate(r, from_attributes=True) for r in records],
        next_before_seq=records[-1].seq if len(records) == limit else None,
    )


_EVENT_PARAMS = ("kind", "meter_id", "actor", "since", "until", "before_id", "limit")


@router.get("/security/events", response_model=EventPage, dependencies=[Depends(_only(*_EVENT_PARAMS))])
def security_events(  # noqa: PLR0913 - one parameter per filter
    *,
    platform: PlatformDep,
    scope: Scope,
    kind: Annotated[str | None, Query(min_length=3, max_length=32, pattern=_DOTTED)] = None,
    meter_id: MeterId = None,
    actor: Actor = None,
    since: Since = None,
    until: Until = None,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Limit = 100,
) -> EventPage:
    """Security events (meter- and API-side failures), newest first. Needs ``security.events.read``."""
    found = security_services.security_events(
        platform.engine, scope, kind=kind, meter_id=meter_id, actor=actor, since=since, until=until,
        before_id=before_id, limit=limit, now=platform.now(),
    )  # fmt: skip
    return EventPage(
        items=[SecurityEventOut.model_validate(e, from_attributes=True) for e in found],
        next_before_id=found[-1].id if len(found) == limit else None,
    )


@router.get(
    "/security/alerts",
    response_model=list[AlertOut],
    dependencies=[Depends(_only("state", "kind", "before_id", "limit"))],
)
def security_alerts(
    platform: PlatformDep,
    scope: Scope,
    state: Literal["open", "acknowledged", "closed"] | None = None,
    kind: Annotated[str | None, Query(min_length=3, max_length=32, pattern=_DOTTED)] = None,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Limit = 100,
) -> list[AlertOut]:
    """Alerts opened by bursts of security events, newest first. Needs ``security.events.read``."""
    found = security_services.security_alerts(
        platform.engine, scope, state=state, kind=kind, before_id=before_id, limit=limit, now=platform.now()
    )
    return [AlertOut.model_validate(a, from_attributes=True) for a in found]


AlertId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post(
    "/security/alerts/{alert_id}/acknowledge",
    response_model=AlertOut,
    responses={404: {"content": {PROBLEM_JSON: {}}}, 409: {"content": {PROBLEM_JSON: {}}}},
    dependencies=[Depends(_only())],
)
def acknowledge_alert(platform: PlatformDep, scope: Scope, alert_id: AlertId) -> AlertOut:
    """Acknowledge an open alert (audited). Needs ``security.alerts.manage``."""
    alert = security_services.acknowledge_alert(platform.engine, scope, alert_id, now=platform.now())
    return AlertOut.model_validate(alert, from_attributes=True)


@router.post(
    "/security/alerts/{alert_id}/close",
    response_model=AlertOut,
    responses={404: {"content": {PROBLEM_JSON: {}}}, 409: {"content": {PROBLEM_JSON: {}}}},
    dependencies=[Depends(_only())],
)
def close_alert(platform: PlatformDep, scope: Scope, alert_id: AlertId) -> AlertOut:
    """Close an open or acknowledged alert (audited). Needs ``security.alerts.manage``."""
    alert = security_services.close_alert(platform.engine, scope, alert_id, now=platform.now())
    return AlertOut.model_validate(alert, from_attributes=True)
