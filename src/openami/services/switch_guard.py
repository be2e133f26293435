"""The off-switch guard (issue 5): rate limits, the two-person rule, uncommanded openings, ignore-disconnects.

A forged or mass disconnect can black out a city; the guard is the platform's last check before a
command is signed and queued (``admit``, called by ``services.switch`` inside the submitting
transaction) and its watch over what the meters then report (``UncommandedOpeningDetector``):

- **rate limits**: at most ``max_disconnects_fleet`` disconnects per rolling ``rate_window_s``, and
  ``max_disconnects_area`` per area (substation); over it the request is refused (``GuardRefused``,
  HTTP 429), audited and raised as a security event;
- **two-person rule**: a batch of more than ``approval_batch_size`` meters of a command in
  ``approval_commands`` is held "awaiting-approval" until a DIFFERENT principal approves it
  (``approve``; the requester approving their own batch is refused and audited) or rejects it;
- **uncommanded openings**: a SWITCH_OPENED event whose counter is not that of a disconnect or limit
  command sent to that meter is unexplained; ``uncommanded_threshold`` of them in one area within
  ``uncommanded_window_s`` open an alarm (a row, a security event, audited) and, when
  ``auto_ignore_disconnects``, the area's meters are sent the signed ignore-disconnects mode;
- **ignore-disconnects**: while an area is in that mode the guard refuses disconnects to it;
  ``ignore_disconnects`` sets it by hand, ``clear`` (security admin) ends it and closes the alarm.

Refusals are audited in their own short transaction (the caller's is rolled back by the raise), so
``services.switch`` must call ``admit`` before it writes anything in the transaction.
"""

from __future__ import annotations

import asyncio
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from openami.bus import topics
from openami.bus.base import Unsubscribe
from openami.db import guard as db
from openami.db import tables as t
from openami.db.guard import Alarm, AreaMode, Batch
from openami.db.tables import substations
from openami.domain.meter_events import EventCode, MeterEvent, MeterEvents
from openami.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from openami.security import audit, events
from openami.security.audit import AuditEntry
from openami.security.policy import ALL_SCOPES, RequestScope, Resource, Role, authorize
from openami.settings import GuardSettings

if TYPE_CHECKING:
    from openami.services.context import Platform
    from openami.services.switch import CommandView

__all__ = [
    "GUARD_SCOPE",
    "Admission",
    "Alarm",
    "AreaMode",
    "Batch",
    "GuardRefused",
    "IgnoringDisconnects",
    "SameApprover",
    "UncommandedOpeningDetector",
    "admit",
    "approve",
    "approve_batch",
    "area_modes",
    "clear",
    "configure",
    "get_alarm",
    "get_batch",
    "ignore_disconnects",
    "is_uncommanded",
    "list_alarms",
    "list_batches",
    "record_refusal",
    "reject",
    "reject_batch",
    "start_detector",
    "stop_detector",
]

log = structlog.get_logger("openami.guard")

DISCONNECTS = frozenset({"disconnect"})  # the commands the rate limits and the ignore mode apply to
IGNORE_ON, IGNORE_OFF = "ignore-disconnects-on", "ignore-disconnects-off"
GUARD_SCOPE = RequestScope(
    principal="system:guard", roles=frozenset({Role.SECURITY_ADMIN, Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES})
)
"""Who the guard acts as when it broadcasts the ignore-disconnects mode by itself."""
_PG_LOCK_KEY = 0x0A_3175_6172_6400  # "guard": serialises admissions on PostgreSQL until commit
_PG_LOCK = sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY))
_SQLITE_WRITE_LOCK = (  # a no-op UPDATE: takes SQLite's write lock (pysqlite begins the transaction there)
    sa.update(t.guard_area_modes).where(sa.false()).values(reason=t.guard_area_modes.c.reason)
)
_settings: dict[str, GuardSettings] = {"current": GuardSettings()}


class GuardRefused(InvalidInput):
    """The off-switch guard refused the commands (a rate limit); the message names the limit."""

    code = "guard-refused"
    http_status = 429
    audited = True  # False when it still needs its audit entry (raised under SQLite's write lock)


class IgnoringDisconnects(GuardRefused):
    """The area's meters are in ignore-disconnects mode: no disconnect until an authorised clear."""

    code = "guard-ignoring-disconnects"
    http_status = 409


class SameApprover(PermissionDenied):
    """The two-person rule: the principal who requested a batch may not approve it."""

    code = "two-person-rule"


@dataclass(frozen=True, slots=True)
class Admission:
    """``state``: "admitted" (queue the commands) or "awaiting-approval" (hold them for a second person)."""

    state: str
    batch_id: int | None = None
    reason: str | None = None


def configure(settings: GuardSettings) -> None:
    """Set the process-wide guard settings (``build_platform`` calls it)."""
    _settings["current"] = settings


def current_settings() -> GuardSettings:
    return _settings["current"]


# --- admission -----------------------------------------------------------------------------------


def admit(
    conn: Connection,
    scope: RequestScope,
    command: str,
    meter_ids: Sequence[int],
    *,
    now: datetime,
    areas: Mapping[int, str | None] | None = None,
) -> Admission:
    """Decide whether a batch of ``command`` ("disconnect", ...) on ``meter_ids`` may be queued now.

    Raises ``GuardRefused`` (HTTP 429: a rate limit) or ``IgnoringDisconnects`` (409: the area's
    meters ignore disconnects), audited in their own transaction; returns "awaiting-approval" with a
    batch id when the batch needs a second approver. Call it before writing in ``conn``. ``areas``:
    each meter's area when the caller has just read it in ``conn`` (``services.switch`` has: one
    query less per submission); read here otherwise.
    """
    settings = current_settings()
    guarded = command in DISCONNECTS or command in settings.approval_commands
    areas = db.areas_of(conn, meter_ids) if areas is None else {m: areas[m] for m in sorted(set(meter_ids))}
    if guarded:
        _serialise(conn, scope, command, areas, settings, now)
    if command in settings.approval_commands and len(areas) > settings.approval_batch_size:
        batch_id = db.create_batch(conn, command, areas, requested_by=scope.principal, now=now)
        reason = f"{len(areas)} meters exceed the two-person limit of {settings.approval_batch_size}"
        entry = AuditEntry(actor=scope.principal, action="guard.hold", outcome="ok", resource=f"batch:{batch_id}",
                           details={"command": command, "meters": len(areas), "reason": reason})  # fmt: skip
        audit.record(conn, entry, now=now)
        return Admission("awaiting-approval", batch_id, reason)
    if command in DISCONNECTS:
        db.record_disconnects(conn, areas, actor=scope.principal, now=now)
    return Admission("admitted")


def _serialise(
    conn: Connection,
    scope: RequestScope,
    command: str,
    areas: Mapping[int, str | None],
    settings: GuardSettings,
    now: datetime,
) -> None:
    """Check, and make the admissions that are counted happen one at a time until their commit.

    PostgreSQL: a transaction-scoped advisory lock first, then the checks. SQLite: the write lock
    first (a no-op UPDATE: pysqlite begins the transaction there), then the checks, once, against
    everything committed before; a refusal cannot be audited in its own transaction while this one
    holds the write lock, so it is raised unaudited (``GuardRefused.audited`` False) and the caller
    (``services.switch``, ``approve``) records it after the rollback. (Checking before the lock as
    well, only to audit a refusal earlier, cost every admitted disconnect its checks twice.)
    """
    if conn.dialect.name == "postgresql":
        conn.execute(_PG_LOCK)
        if command in DISCONNECTS:
            _check_disconnects(conn, scope, areas, settings, now=now)
        return
    conn.execute(_SQLITE_WRITE_LOCK)
    if command in DISCONNECTS:
        _check_disconnects(conn, scope, areas, settings, now=now, audit_own=False)


def _check_disconnects(
    conn: Connection,
    scope: RequestScope,
    areas: Mapping[int, str | None],
    settings: GuardSettings,
    *,
    now: datetime,
    audit_own: bool = True,
) -> None:
    """Refuse (audited) disconnects to an area in ignore-disconnects mode, or over a rate limit."""
    refuse = _refuse if audit_own else _raise
    since = now - timedelta(seconds=settings.rate_window_s)
    counts: dict[str | None, int] | None = None
    if len(areas) == 1:  # one command: every check in one statement
        (area,) = areas.values()
        mode_on, fleet, in_area = db.area_checks(conn, since, area)
        ignoring = {area} if mode_on and area is not None else set()
        counts = {None: fleet} | ({area: in_area} if area is not None else {})
    else:
        ignoring = db.ignoring_areas(conn, areas.values())
    if ignoring:
        names = ", ".join(sorted(ignoring))
        refuse(conn, scope, IgnoringDisconnects(f"area {names} is in ignore-disconnects mode until cleared"), now)
    if counts is None:
        counts = db.count_disconnects(conn, since, (a for a in areas.values() if a is not None))
    window = f"{settings.rate_window_s} s"
    if counts[None] + len(areas) > settings.max_disconnects_fleet:
        message = (f"fleet-wide limit of {settings.max_disconnects_fleet} disconnects per {window}: "
                   f"{counts[None]} admitted, {len(areas)} more asked")  # fmt: skip
        refuse(conn, scope, GuardRefused(message), now)
    asked: dict[str, int] = {}
    for area in areas.values():
        if area is not None:
            asked[area] = asked.get(area, 0) + 1
    for area, n in sorted(asked.items()):
        if counts.get(area, 0) + n > settings.max_disconnects_area:
            message = (f"area {area} limit of {settings.max_disconnects_area} disconnects per {window}: "
                       f"{counts.get(area, 0)} admitted, {n} more asked")  # fmt: skip
            refuse(conn, scope, GuardRefused(message), now)


def _raise(_conn: Connection, _scope: RequestScope, error: GuardRefused, _now: datetime) -> None:
    """Raise ``error`` unaudited: the caller holds the write lock; it is audited after the rollback."""
    error.audited = False
    raise error


def _refuse(conn: Connection, scope: RequestScope, error: GuardRefused, now: datetime) -> None:
    """Audit the refusal and raise it as a security event in their own transaction, then raise ``error``."""
    record_refusal(conn.engine, scope, error, now=now)
    raise error


def record_refusal(engine: Engine, scope: RequestScope, error: GuardRefused, *, now: datetime) -> None:
    """The audit entry (``switch.disconnect`` denied) and the security event ``guard.refused`` of a refusal."""
    details: dict[str, str | int | float | bool | None] = {"code": error.code, "reason": error.message[:300]}
    with engine.begin() as own:
        entry = AuditEntry(actor=scope.principal, action="switch.disconnect", outcome="denied", details=details)
        audit.record(own, entry, now=now)
        events.raise_event(own, "guard.refused", now=now, actor=scope.principal, details=details)
    error.audited = True


def _switch() -> ModuleType:
    """``services.switch``, imported when first needed: it imports this module to call ``admit``."""
    return importlib.import_module("openami.services.switch")


# --- the two-person rule -------------------------------------------------------------------------


def list_batches(engine: Engine, scope: RequestScope, *, state: str | None = None, now: datetime) -> list[Batch]:
    """Held batches (``state``: awaiting-approval, approved, rejected; None for all), newest first."""
    with engine.begin() as conn:
        authorize(conn, scope, "guard.read", now=now)
        return db.list_batches(conn, state=state)


def get_batch(engine: Engine, scope: RequestScope, batch_id: int, *, now: datetime) -> Batch:
    with engine.begin() as conn:
        authorize(conn, scope, "guard.read", Resource("batch", str(batch_id)), now=now)
        return db.get_batch(conn, batch_id)


def _held_batch(conn: Connection, scope: RequestScope, batch_id: int, verb: str, now: datetime) -> Batch:
    """The batch, still awaiting approval, decided by someone other than its requester."""
    batch = db.get_batch(conn, batch_id)
    if batch.state != "awaiting-approval":
        raise Conflict(f"batch {batch_id} is {batch.state}, not awaiting approval")
    if batch.requested_by == scope.principal:
        details: dict[str, str | int | float | bool | None] = {"reason": f"the requester may not {verb} it"}
        with conn.engine.begin() as own:
            entry = AuditEntry(actor=scope.principal, action="commands.approve", outcome="denied",
                               resource=f"batch:{batch_id}", details=details)  # fmt: skip
            audit.record(own, entry, now=now)
            events.raise_event(own, "guard.same-approver", now=now, actor=scope.principal, details=details)
        raise SameApprover(f"two-person rule: {scope.principal} requested batch {batch_id} and may not {verb} it")
    return batch


def approve(engine: Engine, scope: RequestScope, batch_id: int, *, now: datetime) -> Batch:
    """Approve a held batch as the second person: its commands are queued (rate limits checked again).

    Raises NotFound, Conflict (not awaiting approval), SameApprover (the requester), GuardRefused.
    """
    try:
        return _approve(engine, scope, batch_id, now=now)
    except GuardRefused as refused:
        if not refused.audited:  # refused under the write lock: audited now, after the rollback
            record_refusal(engine, scope, refused, now=now)
        raise


def _approve(engine: Engine, scope: RequestScope, batch_id: int, *, now: datetime) -> Batch:
    with engine.begin() as conn:
        authorize(conn, scope, "commands.approve", Resource("batch", str(batch_id)), now=now)
        batch = _held_batch(conn, scope, batch_id, "approve", now)
        areas = db.areas_of(conn, batch.meter_ids)
        _serialise(conn, scope, batch.command, areas, current_settings(), now)
        if not db.decide_batch(conn, batch_id, "approved", by=scope.principal, now=now):
            raise Conflict(f"batch {batch_id} was decided meanwhile")
        if batch.command in DISCONNECTS:
            db.record_disconnects(conn, areas, actor=scope.principal, now=now, batch_id=batch_id)
        released = _switch().release_batch(conn, batch_id, actor=scope.principal, now=now)
        entry = AuditEntry(actor=scope.principal, action="commands.approve", outcome="ok", resource=f"batch:{batch_id}",
                           details={"command": batch.command, "meters": len(batch.meter_ids), "queued": released,
                                    "requested_by": batch.requested_by})  # fmt: skip
        audit.record(conn, entry, now=now)
        return db.get_batch(conn, batch_id)


def approve_batch(platform: Platform, scope: RequestScope, batch_id: int) -> Batch:
    """``approve``, then wake the platform's command queue so the released commands go out at once."""
    batch = approve(platform.engine, scope, batch_id, now=platform.now())
    if platform.commands is not None:
        platform.commands.submitted([])
    return batch


def reject(engine: Engine, scope: RequestScope, batch_id: int, *, reason: str, now: datetime) -> Batch:
    """Reject a held batch: its commands are cancelled (each audited). Same checks as ``approve``."""
    return _reject(engine, scope, batch_id, reason=reason, now=now)[0]


def reject_batch(platform: Platform, scope: RequestScope, batch_id: int, *, reason: str) -> Batch:
    """``reject``, then publish the cancelled commands (``bus.topics.COMMANDS_CHANGED``, and their
    waiters in this process learn their final status at once)."""
    batch, cancelled = _reject(platform.engine, scope, batch_id, reason=reason, now=platform.now())
    if platform.commands is not None:
        platform.commands.submitted(cancelled)
    return batch


def _reject(
    engine: Engine, scope: RequestScope, batch_id: int, *, reason: str, now: datetime
) -> tuple[Batch, list[CommandView]]:
    if not reason.strip() or len(reason) > 255:
        raise InvalidInput("give a reason (1-255 characters)")
    with engine.begin() as conn:
        authorize(conn, scope, "commands.approve", Resource("batch", str(batch_id)), now=now)
        batch = _held_batch(conn, scope, batch_id, "reject", now)
        if not db.decide_batch(conn, batch_id, "rejected", by=scope.principal, now=now, note=reason):
            raise Conflict(f"batch {batch_id} was decided meanwhile")
        cancelled = _switch().cancel_batch(
            conn, batch_id, reason=f"batch rejected: {reason}", actor=scope.principal, now=now
        )
        entry = AuditEntry(actor=scope.principal, action="commands.approve", outcome="failed",
                           resource=f"batch:{batch_id}",
                           details={"decision": "rejected", "reason": reason, "cancelled": len(cancelled),
                                    "requested_by": batch.requested_by})  # fmt: skip
        audit.record(conn, entry, now=now)
        return db.get_batch(conn, batch_id), cancelled


# --- alarms and the ignore-disconnects mode ------------------------------------------------------


def list_alarms(engine: Engine, scope: RequestScope, *, state: str | None = None, now: datetime) -> list[Alarm]:
    with engine.begin() as conn:
        authorize(conn, scope, "guard.read", now=now)
        return db.list_alarms(conn, state=state)


def get_alarm(engine: Engine, scope: RequestScope, alarm_id: int, *, now: datetime) -> tuple[Alarm, list[int]]:
    """An alarm and the meters whose openings it holds."""
    with engine.begin() as conn:
        authorize(conn, scope, "guard.read", Resource("alarm", str(alarm_id)), now=now)
        return db.get_alarm(conn, alarm_id), db.alarm_openings(conn, alarm_id)


def area_modes(engine: Engine, scope: RequestScope, *, now: datetime) -> list[AreaMode]:
    with engine.begin() as conn:
        authorize(conn, scope, "guard.read", now=now)
        return db.list_area_modes(conn)


def _known_area(conn: Connection, area: str) -> None:
    if conn.execute(sa.select(substations.c.id).where(substations.c.id == area)).first() is None:
        raise NotFound(f"no area (substation) {area[:32]!r}")


def ignore_disconnects(platform: Platform, scope: RequestScope, area: str, *, reason: str, now: datetime) -> int:
    """Put an area's meters in the signed ignore-disconnects mode by hand; returns how many meters were sent it.

    The guard refuses disconnects to the area from now on (committed first); then the signed mode is
    queued for every meter of the area through ``services.switch``.
    """
    if not reason.strip() or len(reason) > 255:
        raise InvalidInput("give a reason (1-255 characters)")
    with platform.engine.begin() as conn:
        authorize(conn, scope, "guard.ignore-disconnects", Resource("area", area, area=area), now=now)
        _known_area(conn, area)
        db.set_area_mode(conn, area, on=True, by=scope.principal, now=now, reason=reason)
        entry = AuditEntry(actor=scope.principal, action="guard.ignore-disconnects", outcome="ok",
                           resource=f"area:{area}", details={"mode": "on", "reason": reason})  # fmt: skip
        audit.record(conn, entry, now=now)
        meters = db.meters_in_area(conn, area)
    return _broadcast(platform, scope, meters, IGNORE_ON, reason)


def clear(platform: Platform, scope: RequestScope, area: str, *, now: datetime) -> int:
    """End an area's ignore-disconnects mode (signed OFF to its meters) and clear its open alarm.

    Returns how many meters were sent the OFF command. Raises Conflict when the area is not in the mode.
    """
    with platform.engine.begin() as conn:
        authorize(conn, scope, "guard.clear", Resource("area", area, area=area), now=now)
        _known_area(conn, area)
        alarm = db.open_alarm(conn, area)
        if not db.ignoring_areas(conn, [area]) and alarm is None:
            raise Conflict(f"area {area} is not in ignore-disconnects mode and has no open alarm")
        db.set_area_mode(conn, area, on=False, by=scope.principal, now=now, reason="cleared")
        if alarm is not None:
            db.clear_alarm(conn, alarm.id, by=scope.principal, now=now)
        entry = AuditEntry(actor=scope.principal, action="guard.clear", outcome="ok", resource=f"area:{area}",
                           details={"alarm": None if alarm is None else alarm.id})  # fmt: skip
        audit.record(conn, entry, now=now)
        meters = db.meters_in_area(conn, area)
    return _broadcast(platform, scope, meters, IGNORE_OFF, f"clear ignore-disconnects in {area}")


def _broadcast(platform: Platform, scope: RequestScope, meter_ids: Sequence[int], command: str, reason: str) -> int:
    """Queue the signed ignore-disconnects ON/OFF command for ``meter_ids`` through ``services.switch``."""
    if not meter_ids:
        return 0
    _switch().broadcast_mode(platform, scope, meter_ids, on=command == IGNORE_ON, reason=reason[:255])
    return len(meter_ids)


# --- uncommanded openings ------------------------------------------------------------------------


def is_uncommanded(event: MeterEvent, explains: bool) -> bool:
    """A switch opening no authorised command explains: no counter, or one that is not a disconnect/limit
    command sent to that meter (``explains``: what the command table says about the counter)."""
    return event.code == EventCode.SWITCH_OPENED and (event.value is None or not explains)


def _explained(conn: Connection, event: MeterEvent) -> bool:
    value = event.value
    if value is None or not math.isfinite(value) or value < 0 or value != int(value):  # not a counter
        return False
    return db.command_explains(conn, event.meter_id, int(value))


def record_openings(engine: Engine, batch: MeterEvents, *, now: datetime) -> list[int]:
    """Store the batch's switch openings; open or extend alarms. Returns the ids of alarms opened now."""
    openings = [e for e in batch.events if e.code == EventCode.SWITCH_OPENED]
    if not openings:
        return []
    settings = current_settings()
    with engine.begin() as conn:
        areas = db.areas_of(conn, {e.meter_id for e in openings})
        touched: set[str] = set()
        for event in openings:
            area = areas.get(event.meter_id)
            explained = _explained(conn, event)
            counter = int(event.value) if explained and event.value is not None else None
            uncommanded = is_uncommanded(event, explained)
            new = db.record_opening(conn, event.meter_id, area, meter_time=event.meter_time, counter=counter,
                                    uncommanded=uncommanded, now=now)  # fmt: skip
            if new and uncommanded:
                events.raise_event(conn, "meter.uncommanded-opening", now=now, meter_id=event.meter_id,
                                   details={"area": area, "meter_time": event.meter_time})  # fmt: skip
                if area is not None:
                    touched.add(area)
        return [a for a in (_update_alarm(conn, area, settings, now) for area in sorted(touched)) if a is not None]


def _update_alarm(conn: Connection, area: str, settings: GuardSettings, now: datetime) -> int | None:
    """Add the area's new unexplained openings to its open alarm, or open one at the threshold."""
    since = now - timedelta(seconds=settings.uncommanded_window_s)
    pending = db.unalarmed_uncommanded(conn, area, since)
    alarm = db.open_alarm(conn, area)
    if alarm is not None:
        db.attach_openings(conn, alarm.id, pending)
        return None
    if len(pending) < settings.uncommanded_threshold:
        return None
    alarm_id = db.create_alarm(conn, area, openings=len(pending), threshold=settings.uncommanded_threshold,
                               window_s=settings.uncommanded_window_s, now=now)  # fmt: skip
    db.attach_openings(conn, alarm_id, pending)
    details: dict[str, str | int | float | bool | None] = {"area": area, "openings": len(pending),
                                                           "window_s": settings.uncommanded_window_s}  # fmt: skip
    events.raise_event(conn, "guard.uncommanded-openings", now=now, actor="system:guard", details=details)
    entry = AuditEntry(actor="system:guard", action="guard.alarm", outcome="ok", resource=f"alarm:{alarm_id}",
                       details=details)  # fmt: skip
    audit.record(conn, entry, now=now)
    if settings.auto_ignore_disconnects:  # with the alarm, so no disconnect slips in between
        _set_ignore_mode(conn, area, alarm_id, now)
    log.warning("guard.alarm.opened", area=area, openings=len(pending), alarm=alarm_id)
    return alarm_id


def _set_ignore_mode(conn: Connection, area: str, alarm_id: int, now: datetime) -> None:
    """The guard itself puts the alarm's area in ignore-disconnects mode (the signed commands follow)."""
    db.set_area_mode(conn, area, on=True, by=GUARD_SCOPE.principal, now=now, alarm_id=alarm_id,
                     reason=f"uncommanded openings (alarm {alarm_id})")  # fmt: skip
    db.mark_alarm_mode_sent(conn, alarm_id)
    entry = AuditEntry(actor=GUARD_SCOPE.principal, action="guard.ignore-disconnects", outcome="ok",
                       resource=f"area:{area}", details={"mode": "on", "alarm": alarm_id})  # fmt: skip
    audit.record(conn, entry, now=now)


def _send_ignore_mode(platform: Platform, alarm_id: int) -> int:
    """Queue the signed IGNORE_DISCONNECTS_ON for every meter of an alarm's area; returns how many."""
    with platform.engine.connect() as conn:
        alarm = db.get_alarm(conn, alarm_id)
        meters = db.meters_in_area(conn, alarm.area)
    return _broadcast(platform, GUARD_SCOPE, meters, IGNORE_ON, f"uncommanded openings (alarm {alarm_id})")


class UncommandedOpeningDetector:
    """Subscribes to ``METER_EVENTS``; stores switch openings, raises alarms, sends the ignore mode."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._unsubscribe: Unsubscribe | None = None
        self.alarms_opened = 0

    def start(self) -> None:
        self._unsubscribe = self._platform.bus.subscribe(topics.METER_EVENTS, self.handle)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def handle(self, batch: MeterEvents) -> None:
        if not any(e.code == EventCode.SWITCH_OPENED for e in batch.events):
            return
        platform = self._platform
        now = platform.now()
        opened = await asyncio.to_thread(record_openings, platform.engine, batch, now=now)
        self.alarms_opened += len(opened)
        if current_settings().auto_ignore_disconnects:
            for alarm_id in opened:
                await asyncio.to_thread(_send_ignore_mode, platform, alarm_id)


def start_detector(platform: Platform) -> None:
    """Start the uncommanded-opening detector (``bootstrap.start_platform``)."""
    if platform.guard is None:
        platform.guard = UncommandedOpeningDetector(platform)
        platform.guard.start()


def stop_detector(platform: Platform) -> None:
    if platform.guard is not None:
        platform.guard.stop()
        platform.guard = None
