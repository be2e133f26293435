"""The OMS side of outages: start/stop the engine and webhooks, list and show outages, close or annotate.

Reading is ``outages.read``, row-scoped: a network operator sees the outages that darken at least one
meter of their area (``policy.visible_meters`` inside the query), and only those meters in a detail.
Closing and annotating by hand is ``outages.manage``, audited in the same transaction, and published
on ``OUTAGES_CHANGED`` like every change the engine makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from openami.bus.topics import OUTAGES_CHANGED
from openami.db import outages as repo
from openami.db.outages import AffectedMeter, Note, OutageRecord
from openami.domain.outages import OutageState
from openami.errors import Conflict, InvalidInput, NotFound
from openami.security.audit import AuditEntry, record
from openami.security.policy import Resource, authorize, visible_meters
from openami.services.context import Platform, RequestScope
from openami.services.outage import OutageEngine, changed
from openami.services.push_process import PushProcess
from openami.services.webhooks import WebhookDispatcher

__all__ = [
    "OutageDetail",
    "OutageRecord",
    "annotate_outage",
    "close_outage",
    "get_outage",
    "list_outages",
    "start",
    "stop",
]

READ, MANAGE = "outages.read", "outages.manage"
STATES = tuple(str(s) for s in OutageState)
_dispatchers: dict[int, WebhookDispatcher] = {}


async def start(platform: Platform) -> None:
    """Start the outage engine and the webhook dispatcher (``settings.outages.enabled``)."""
    settings = platform.settings.outages
    if not settings.enabled or platform.outages is not None:
        return
    dispatcher = WebhookDispatcher(platform.engine, platform.keystore, platform.bus, settings, now=platform.now)
    await dispatcher.start()
    _dispatchers[id(platform)] = dispatcher
    engine = OutageEngine(
        platform.engine, platform.bus, platform.collector, settings, now=platform.now, backlog=lambda: _queued(platform)
    )
    await engine.start()
    platform.outages = engine


def _queued(platform: Platform) -> int:
    """Notifications waiting in the event pipeline, and in the push process's if there is one
    (restoration verification waits for them)."""
    own = 0 if platform.events is None else platform.events.queued
    return own + (platform.push_listener.queued if isinstance(platform.push_listener, PushProcess) else 0)


async def stop(platform: Platform) -> None:
    if platform.outages is not None:
        await platform.outages.stop()
        platform.outages = None
    dispatcher = _dispatchers.pop(id(platform), None)
    if dispatcher is not None:
        await dispatcher.stop()


@dataclass(frozen=True, slots=True)
class OutageDetail:
    outage: OutageRecord
    meters: list[AffectedMeter]  # those the caller may see
    still_dark: list[int]  # the restoration list: meters verification found still dark
    children: list[int]
    notes: list[Note]


def list_outages(
    platform: Platform,
    scope: RequestScope,
    *,
    states: tuple[str, ...] = (),
    before_id: int | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[OutageRecord]:
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise InvalidInput(f"unknown outage state(s) {unknown}: one of {', '.join(STATES)}")
    moment = now or platform.now()
    with platform.engine.connect() as conn:
        authorize(conn, scope, READ, now=moment)
        visible = visible_meters(scope, READ)
        return repo.list_outages(conn, states=states, visible=visible, before_id=before_id, limit=limit)


def get_outage(platform: Platform, scope: RequestScope, outage_id: int, *, now: datetime | None = None) -> OutageDetail:
    """One outage with its (visible) meters and restoration list; NotFound also when out of the caller's rows."""
    moment = now or platform.now()
    with platform.engine.connect() as conn:
        outage = repo.get_outage(conn, outage_id)
        authorize(conn, scope, READ, Resource("outage", str(outage_id), area=outage.area), now=moment)
        visible = visible_meters(scope, READ)
        if not repo.is_visible(conn, outage_id, visible):
            raise NotFound(f"outage {outage_id} does not exist")
        meters = repo.affected_meters(conn, outage_id, visible=visible)
        return OutageDetail(
            outage,
            meters,
            [m.meter_id for m in meters if m.state == "still-dark"],
            repo.children(conn, outage_id),
            repo.notes(conn, outage_id),
        )


def _audit(scope: RequestScope, conn: Connection, outage_id: int, operation: str, at: datetime) -> None:
    entry = AuditEntry(
        actor=scope.principal, action=MANAGE, outcome="ok", resource=f"outage:{outage_id}", purpose="outage",
        details={"operation": operation},
    )  # fmt: skip
    record(conn, entry, now=at)


async def close_outage(
    platform: Platform, scope: RequestScope, outage_id: int, *, note: str | None = None, now: datetime | None = None
) -> OutageRecord:
    """Close an outage by hand (e.g. confirmed restored in the field); Conflict if it is already closed."""
    moment = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, MANAGE, Resource("outage", str(outage_id)), purpose="outage", now=moment)
        current = repo.get_outage(conn, outage_id)
        if current.state == OutageState.CLOSED:
            raise Conflict(f"outage {outage_id} is already closed")
        if note:
            repo.add_note(conn, outage_id, actor=scope.principal, text=_note(note), now=moment)
        updated = repo.change(conn, outage_id, now=moment, state=OutageState.CLOSED, closed_at=moment,
                              closed_by=scope.principal)  # fmt: skip
        _audit(scope, conn, outage_id, "close", moment)
    if platform.outages is not None:
        platform.outages.forget(outage_id)
    await platform.bus.publish(OUTAGES_CHANGED, changed(updated, "closed", moment))
    return updated


async def annotate_outage(
    platform: Platform, scope: RequestScope, outage_id: int, note: str, *, now: datetime | None = None
) -> OutageRecord:
    moment = now or platform.now()
    text = _note(note)
    with platform.engine.begin() as conn:
        authorize(conn, scope, MANAGE, Resource("outage", str(outage_id)), purpose="outage", now=moment)
        repo.get_outage(conn, outage_id)
        repo.add_note(conn, outage_id, actor=scope.principal, text=text, now=moment)
        updated = repo.change(conn, outage_id, now=moment)
        _audit(scope, conn, outage_id, "annotate", moment)
    await platform.bus.publish(OUTAGES_CHANGED, changed(updated, "annotated", moment))
    return updated


def _note(text: str) -> str:
    cleaned = text.strip()
    if not 1 <= len(cleaned) <= 1000 or not all(c.isprintable() or c == "\n" for c in cleaned):
        raise InvalidInput("a note is 1-1000 printable characters")
    return cleaned
