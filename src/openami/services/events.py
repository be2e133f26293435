"""Meter events: listing them (row-scoped, audited) and running the push listener and event pipeline.

``list_events`` is ``events.read`` (policy): a network operator sees only the meters of their area,
through ``policy.visible_meters`` inside the query; a meter outside the scope is NotFound, as an
unknown one. ``start_pipeline``/``stop_pipeline`` are called by ``bootstrap.start_platform`` and
``stop_platform`` (docs/events.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy.engine import Engine

from openami.db import meter_events as events_repo
from openami.db import meters as meter_repo
from openami.domain.meter_events import EventCategory, EventCode
from openami.errors import InvalidInput
from openami.headend.events import EventPipeline
from openami.headend.push_listener import PushListener
from openami.security import audit
from openami.security.policy import authorize, visible_meters
from openami.services.context import Platform, RequestScope
from openami.services.push_process import PushProcess, PushProcessError

__all__ = [
    "MAX_LIMIT",
    "EventView",
    "list_events",
    "parse_categories",
    "parse_codes",
    "start_pipeline",
    "stop_pipeline",
]

MAX_LIMIT = 5000
_log = structlog.get_logger("openami.services.events")


@dataclass(frozen=True, slots=True)
class EventView:
    """One stored event as the API and CLI show it."""

    id: int
    meter_id: int
    code: str  # "power-down", "cover-opened", ...
    code_number: int
    category: str
    meter_time: datetime
    received_at: datetime
    source: str  # "push" | "log"
    value: float | None


def code_name(code: EventCode) -> str:
    return code.name.lower().replace("_", "-")


def parse_codes(names: Sequence[str]) -> list[EventCode]:
    """Event codes by name ("power-down", "POWER_DOWN") or number; InvalidInput names the unknown one."""
    codes = []
    for name in names:
        text = name.strip()
        try:
            codes.append(EventCode(int(text)) if text.isdigit() else EventCode[text.upper().replace("-", "_")])
        except (KeyError, ValueError):
            known = ", ".join(code_name(c) for c in EventCode)
            raise InvalidInput(f"unknown event code {text[:32]!r} (known: {known})") from None
    return codes


def parse_categories(names: Sequence[str]) -> list[EventCategory]:
    categories = []
    for name in names:
        try:
            categories.append(EventCategory(name.strip().lower()))
        except ValueError:
            known = ", ".join(c.value for c in EventCategory)
            raise InvalidInput(f"unknown event category {name[:32]!r} (known: {known})") from None
    return categories


def _epoch(moment: datetime | None, name: str) -> int | None:
    if moment is None:
        return None
    if moment.utcoffset() is None:
        raise InvalidInput(f"'{name}' must carry a time zone (e.g. 2026-11-01T00:00:00Z)")
    return int(moment.timestamp())


def list_events(  # noqa: PLR0913 - the query's filters, then who asks and when
    engine: Engine,
    scope: RequestScope,
    *,
    meter_id: int | None = None,
    codes: Sequence[EventCode] = (),
    categories: Sequence[EventCategory] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[EventView]:
    """Events newest meter time first, filtered by meter, code, category and meter time (inclusive)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    first, last = _epoch(since, "since"), _epoch(until, "until")
    if first is not None and last is not None and last < first:
        raise InvalidInput("'until' is before 'since'")
    moment = now or datetime.now(UTC)
    with engine.connect() as conn:
        authorize(conn, scope, "events.read", now=moment)
        visible = visible_meters(scope, "events.read")
        premise = None
        if meter_id is not None:
            meter_repo.get_meter(conn, meter_id, visible=visible)  # NotFound outside the scope
            premise = meter_repo.premise_of(conn, meter_id)
        records = events_repo.list_events(
            conn,
            meter_id=meter_id,
            codes=[int(c) for c in codes],
            categories=list(categories),
            since=first,
            until=last,
            visible=visible,
            limit=limit,
        )
        entry = audit.AuditEntry(
            scope.principal, "events.read", "ok", resource=None if meter_id is None else f"meter:{meter_id}",
            subject=None if premise is None else f"premise:{premise}",
            details={"since": first, "until": last, "events": len(records)},
        )  # fmt: skip
        audit.record(conn, entry, now=moment)
        conn.commit()
    return [_view(r) for r in records]


def _view(r: events_repo.EventRecord) -> EventView:
    code = EventCode(r.code)
    return EventView(
        id=r.id,
        meter_id=r.meter_id,
        code=code_name(code),
        code_number=int(code),
        category=r.category,
        meter_time=datetime.fromtimestamp(r.meter_time, UTC),
        received_at=datetime.fromtimestamp(r.received_at, UTC),
        source=r.source,
        value=r.value,
    )


# -- lifecycle (bootstrap) --------------------------------------------------------------------------


async def start_pipeline(platform: Platform) -> None:
    """Start the event pipeline, hand it to the collector (event-log reads), and open the push listener."""
    settings = platform.settings.push
    collector = platform.collector
    pipeline = EventPipeline(platform.engine, platform.bus, lambda: collector.targets, settings, now=platform.now)
    await pipeline.start()
    platform.events = pipeline
    collector.events = pipeline
    if not settings.enabled:
        return
    listener: PushListener | PushProcess
    try:
        if settings.process:  # listener and pipeline in a child process; its events come back on the bus
            listener = PushProcess(platform.settings, platform.engine, platform.bus)
        else:
            listener = PushListener(pipeline, settings)
        await listener.start()
    except (OSError, PushProcessError) as exc:  # e.g. the port is taken: events still arrive from the meters' logs
        _log.error("headend.push.not-listening", host=settings.host, port=settings.port, error=str(exc))
        return
    platform.push_listener = listener


async def stop_pipeline(platform: Platform) -> None:
    """Close the listener, store what is queued, stop the workers (before the bus closes)."""
    if platform.push_listener is not None:
        await platform.push_listener.stop()
        platform.push_listener = None
    if platform.events is not None:
        platform.collector.events = None
        await platform.events.stop()
        platform.events = None
