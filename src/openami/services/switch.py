"""Switch and limiter commands: submit (authorise, validate, guard, sign, record), the queue that takes
them to the meters, status, cancellation and the state query (docs/switch.md).

``submit`` does everything in one transaction: the policy (``switch.disconnect`` / ``switch.reconnect``
/ ``switch.limit`` on the meter with its area, so a network operator's "own area, purpose safety"
applies), validation (unknown meter 404, a meter without a switch 422, a conflicting command in
flight 409, invalid limits or times 422), the off-switch guard (``switch_guard.admit``), the command
authority's next counter, the signature, the row and its audit entry. Nothing is half-written: a
refusal rolls all of it back (and is itself audited, in its own transaction).

``services.switch_queue.CommandQueue`` (``Platform.commands``, started by ``start_queue`` from
``bootstrap.start_platform``) takes the commands to the meters; ``_move`` here is the one way a
command changes status (a guarded UPDATE and its audit entry, in the caller's transaction).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from openami.db import commands as repo
from openami.db.commands import CommandRow
from openami.db.tables import feeders, meters, service_points, switch_commands, transformers
from openami.domain.commands import COMMAND_NAMES, FINAL_STATUSES
from openami.domain.meters import MeterKind
from openami.errors import Conflict, InvalidInput, NotFound
from openami.headend.commands import CommandExecutor, SwitchState
from openami.protocols.dlms.signed_command import (
    Command,
    Envelope,
    LimitParameters,
)
from openami.security import audit
from openami.security import command_authority as authority_core
from openami.security.command_authority import CommandAuthority
from openami.security.policy import RequestScope, Resource, authorize, visible_meters
from openami.services import switch_guard
from openami.services.context import Platform
from openami.services.pki import ca_files
from openami.waiting import wait_until_set

__all__ = [
    "ACTIONS",
    "CommandConflict",
    "CommandRequest",
    "CommandView",
    "IdempotencyKeyReused",
    "LimitParameters",
    "MeterHasNoSwitch",
    "SwitchStateView",
    "cancel_command",
    "ensure_authority",
    "get_command",
    "list_commands",
    "read_state",
    "release_batch",
    "start_queue",
    "stop_queue",
    "submit",
    "submit_batch",
    "wait_for",
    "wait_until_set",
]

_log = structlog.get_logger("openami.services")
_T = TypeVar("_T")

ACTIONS = {
    "disconnect": "switch.disconnect",
    "reconnect": "switch.reconnect",
    "reconnect-arm": "switch.reconnect",
    "limit": "switch.limit",
    "cancel-limit": "switch.limit",
    "ignore-on": "guard.ignore-disconnects",  # only through broadcast_mode (the guard)
    "ignore-off": "guard.ignore-disconnects",
}
_SIGNED = {
    "disconnect": Command.DISCONNECT,
    "reconnect": Command.RECONNECT,
    "reconnect-arm": Command.ARM_RECONNECT,
    "limit": Command.SET_LIMIT,
    "cancel-limit": Command.CANCEL_LIMIT,
    "ignore-on": Command.IGNORE_DISCONNECTS_ON,
    "ignore-off": Command.IGNORE_DISCONNECTS_OFF,
}
_GROUP = {"disconnect": "switch", "reconnect": "switch", "reconnect-arm": "switch", "limit": "limit",
          "cancel-limit": "limit", "ignore-on": "mode", "ignore-off": "mode"}  # fmt: skip
"""Commands of one group conflict while one of them is in flight for the meter."""
_WAITING = ("awaiting-approval", "queued")
_IN_FLIGHT = ("awaiting-approval", "queued", "sent")
_CLOCK_SKEW = timedelta(minutes=5)  # the envelope's window opens this much early: meter clocks drift
_MAX_AHEAD = timedelta(days=30)
_MAX_THRESHOLD_W = 10_000_000
_MAX_DURATION_S = 86_400
_PRIORITY = (-1000, 1000)
_SYSTEM = "system:switch"


class MeterHasNoSwitch(InvalidInput):
    code = "meter-has-no-switch"


class CommandConflict(Conflict):
    code = "command-in-flight"


class IdempotencyKeyReused(Conflict):
    code = "idempotency-key-reused"


class CommandNotCancellable(Conflict):
    code = "command-not-cancellable"


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """What a caller asks for. ``execute_at`` None: now; ``valid_for_s``: how long after ``execute_at``
    the meter may still act on it (settings ``switch.default_valid_for_s`` when None)."""

    meter_id: int
    command: str  # disconnect, reconnect, reconnect-arm, limit, cancel-limit
    execute_at: datetime | None = None
    valid_for_s: int | None = None
    limit: LimitParameters | None = None
    reason: str = "operator request"
    priority: int = 0
    purpose: str | None = None
    batch_id: int | None = None
    workflow: str | None = None


@dataclass(frozen=True, slots=True)
class CommandView:
    """A command and where it is; the confirmation fields are set once the meter confirmed it."""

    id: int
    meter_id: int
    command: str
    status: str
    counter: int
    execute_at: datetime
    not_after: datetime
    threshold_w: int | None
    duration_s: int | None
    emergency: bool | None
    requested_by: str
    reason: str
    purpose: str | None
    workflow: str | None
    batch_id: int | None
    priority: int
    attempts: int
    failure_reason: str | None
    refusal: str | None
    idempotency_key: str | None
    created_at: datetime
    queued_at: datetime | None
    sent_at: datetime | None
    confirmed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelled_at: datetime | None
    updated_at: datetime
    output_state: bool | None
    control_state: int | None
    voltage_v: float | None
    current_a: float | None
    load_side_voltage_v: float | None
    active_threshold_w: int | None
    final_import_wh: float | None
    final_export_wh: float | None
    final_read_at: datetime | None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


_VIEW_FIELDS = tuple(CommandView.__dataclass_fields__)
_VIEW_VALUES = operator.attrgetter(*_VIEW_FIELDS)  # a command's view is built several times: no dict per view


def _view(row: CommandRow) -> CommandView:
    return CommandView(*_VIEW_VALUES(row))


@dataclass(frozen=True, slots=True)
class SwitchStateView:
    """A meter's switch and limiter state as the meter answered it just now."""

    meter_id: int
    read_at: datetime
    output_state: bool | None
    control_state: int | None
    control_mode: int | None
    active_threshold_w: float | None
    voltage_v: float | None
    current_a: float | None
    active_power_w: float | None
    load_side_voltage_v: float | None
    last_counter: int | None
    ignore_disconnects: bool | None


# -- the authority ------------------------------------------------------------------------------------


def ensure_authority(platform: Platform) -> CommandAuthority:
    """The platform's command authority, created (certificate from the utility CA) on first use."""
    if platform.authority is None:
        with platform.engine.begin() as conn:
            platform.authority = authority_core.load_or_create(
                conn, platform.keystore, ca_files(platform.settings), now=platform.now()
            )
    return platform.authority


# -- submit --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meter:
    id: int
    kind: str
    system_title: bytes
    area: str | None


_METER = (  # built once: a submission's CPU is mostly building statements otherwise
    sa.select(meters.c.id, meters.c.kind, meters.c.system_title, feeders.c.substation_id)
    .select_from(meters)
    .outerjoin(service_points, service_points.c.id == meters.c.service_point_id)
    .outerjoin(transformers, transformers.c.id == service_points.c.transformer_id)
    .outerjoin(feeders, feeders.c.id == transformers.c.feeder_id)
    .where(meters.c.id == sa.bindparam("meter_id"))
)


_InFlight = tuple[int, int, str, str]  # a command in flight: id, meter, command, status
_METER_IN_FLIGHT = (  # _METER and the meter's commands in flight, in one round trip (a single submission)
    _METER.add_columns(switch_commands.c.id, switch_commands.c.command, switch_commands.c.status)
    .outerjoin(
        switch_commands,
        sa.and_(switch_commands.c.meter_id == meters.c.id,
                sa.or_(*(switch_commands.c.status == status for status in _IN_FLIGHT))),
    )
    .order_by(switch_commands.c.counter)
)  # fmt: skip


def _meter(conn: Connection, meter_id: int) -> _Meter:
    row = conn.execute(_METER, {"meter_id": meter_id}).one_or_none()
    if row is None:
        raise NotFound(f"meter {meter_id} does not exist")
    return _Meter(int(row[0]), str(row[1]), bytes(row[2]), row[3])


def _meter_in_flight(conn: Connection, meter_id: int) -> tuple[_Meter, list[_InFlight]]:
    """``_meter`` and the meter's commands in flight (for ``_check_conflicts``), in counter order."""
    rows = conn.execute(_METER_IN_FLIGHT, {"meter_id": meter_id}).all()
    if not rows:
        raise NotFound(f"meter {meter_id} does not exist")
    first = rows[0]
    meter = _Meter(int(first[0]), str(first[1]), bytes(first[2]), first[3])
    return meter, [(int(r[4]), meter.id, str(r[5]), str(r[6])) for r in rows if r[4] is not None]


def _check_request(request: CommandRequest, platform: Platform, now: datetime) -> tuple[datetime, datetime]:
    """Shape checks before anything is looked up; returns the execution time and the end of validity."""
    if request.command not in COMMAND_NAMES:
        raise InvalidInput(f"unknown command {request.command[:32]!r}; one of {', '.join(COMMAND_NAMES)}")
    if (request.command == "limit") != (request.limit is not None):
        raise InvalidInput("a limit command needs limit parameters, and only a limit command takes them")
    if request.limit is not None:
        _check_limit(request.limit)
    if not request.reason or len(request.reason) > 255 or not request.reason.isprintable():
        raise InvalidInput("a reason of 1-255 printable characters is required")
    if not _PRIORITY[0] <= request.priority <= _PRIORITY[1]:
        raise InvalidInput(f"priority must be between {_PRIORITY[0]} and {_PRIORITY[1]}")
    if request.workflow is not None and not 1 <= len(request.workflow) <= 32:
        raise InvalidInput("a workflow name has 1-32 characters")
    settings = platform.settings.switch
    valid_for = settings.default_valid_for_s if request.valid_for_s is None else request.valid_for_s
    if not 10 <= valid_for <= settings.max_valid_for_s:
        raise InvalidInput(f"valid_for_s must be between 10 and {settings.max_valid_for_s} seconds")
    execute_at = now if request.execute_at is None else request.execute_at
    if execute_at.tzinfo is None or execute_at.utcoffset() is None:
        raise InvalidInput("execute_at needs a time zone")
    execute_at = execute_at.astimezone(UTC)
    if execute_at < now - timedelta(minutes=1):
        raise InvalidInput("execute_at is in the past")
    if execute_at > now + _MAX_AHEAD:
        raise InvalidInput("execute_at is more than 30 days ahead")
    execute_at = max(execute_at, now)
    return execute_at, execute_at + timedelta(seconds=valid_for)


def _check_limit(limit: LimitParameters) -> None:
    if not 1 <= limit.threshold_w <= _MAX_THRESHOLD_W:
        raise InvalidInput(f"limit threshold_w must be between 1 and {_MAX_THRESHOLD_W} W")
    if not 1 <= limit.duration_s <= _MAX_DURATION_S:
        raise InvalidInput(f"limit duration_s must be between 1 and {_MAX_DURATION_S} s")


def _request_hash(request: CommandRequest) -> str:
    """What makes two submissions the same request (for the idempotency check)."""
    limit = request.limit
    body = {
        "meter": request.meter_id,
        "command": request.command,
        "execute_at": None if request.execute_at is None else request.execute_at.astimezone(UTC).isoformat(),
        "valid_for_s": request.valid_for_s,
        "limit": None if limit is None else [limit.threshold_w, limit.duration_s, limit.emergency],
        "reason": request.reason,
        "priority": request.priority,
        "purpose": request.purpose,
        "batch": request.batch_id,
        "workflow": request.workflow,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _authorize(conn: Connection, scope: RequestScope, request: CommandRequest, meter: _Meter, now: datetime) -> None:
    resource = Resource("meter", str(meter.id), area=meter.area, meter_kind=meter.kind)
    authorize(conn, scope, ACTIONS[request.command], resource, purpose=request.purpose, now=now)


def _check_switch(meter: _Meter) -> None:
    if meter.kind != MeterKind.ELECTRIC:
        raise MeterHasNoSwitch(f"meter {meter.id} is a {meter.kind} meter: it has no supply switch or limiter")


def _check_conflicts(
    conn: Connection, requests: Sequence[CommandRequest], in_flight: Sequence[_InFlight] | None = None
) -> None:
    """409 when a command of the same group (switch, limit) is in flight for one of the meters (``in_flight``:
    their commands in flight, when the caller read them already)."""
    wanted = {(r.meter_id, _GROUP[r.command]) for r in requests}
    if len(wanted) != len(requests):
        raise CommandConflict("the batch names a meter twice for the same switch or limiter")
    if in_flight is None:
        in_flight = [
            (row.id, row.meter_id, row.command, row.status)
            for row in repo.open_commands_of(conn, {r.meter_id for r in requests}, _IN_FLIGHT)
        ]
    for command_id, meter_id, command, status in in_flight:
        if (meter_id, _GROUP[command]) in wanted:
            raise CommandConflict(f"meter {meter_id} already has command {command_id} ({command}, {status}) in flight")


def _insert(  # noqa: PLR0913 - the parts of one signed command, all needed
    conn: Connection,
    authority: CommandAuthority,
    scope: RequestScope,
    request: CommandRequest,
    meter: _Meter,
    window: tuple[datetime, datetime],
    *,
    status: str,
    batch_id: int | None,
    idempotency_key: str | None,
    now: datetime,
) -> CommandRow:
    """Take the next counter, sign, insert and audit one command (in the caller's transaction); returns
    the row as inserted (no read back: the caller builds its view from it)."""
    counter = authority_core.take_counter(conn)
    execute_at, not_after = window
    envelope = Envelope(meter.system_title, _SIGNED[request.command], counter, execute_at - _CLOCK_SKEW, not_after,
                        request.limit)  # fmt: skip
    signed = authority.sign(envelope)
    limit = request.limit
    row = repo.insert_command_row(
        conn,
        {
            "meter_id": meter.id, "command": request.command, "status": status, "counter": counter,
            "threshold_w": None if limit is None else limit.threshold_w,
            "duration_s": None if limit is None else limit.duration_s,
            "emergency": None if limit is None else limit.emergency,
            "execute_at": execute_at, "not_after": not_after, "envelope": signed.envelope,
            "signature": signed.signature, "request_hash": _request_hash(request), "idempotency_key": idempotency_key,
            "requested_by": scope.principal, "reason": request.reason, "purpose": request.purpose,
            "workflow": request.workflow, "batch_id": batch_id, "priority": request.priority,
            "next_attempt_at": execute_at, "created_at": now, "updated_at": now,
            "queued_at": now if status == "queued" else None,
        },
    )  # fmt: skip
    details: dict[str, str | int | float | bool | None] = {
        "command_id": row.id, "command": request.command, "counter": counter, "status": status,
        "reason": request.reason, "batch_id": batch_id, "workflow": request.workflow,
        "execute_at": execute_at.isoformat(), "not_after": not_after.isoformat(),
    }  # fmt: skip
    if limit is not None:
        details |= {"threshold_w": limit.threshold_w, "duration_s": limit.duration_s, "emergency": limit.emergency}
    entry = audit.AuditEntry(scope.principal, ACTIONS[request.command], "ok", resource=f"meter:{meter.id}",
                             purpose=request.purpose, details=details)  # fmt: skip
    audit.record(conn, entry, now=now)
    return row


def _audit_refusal(platform: Platform, scope: RequestScope, action: str, resource: str, error: Exception) -> None:
    """A refused submission (bad input, conflict) is audited too, in its own transaction."""
    code = getattr(error, "code", type(error).__name__)
    message = str(getattr(error, "message", error))[:255]
    entry = audit.AuditEntry(scope.principal, action, "failed", resource=resource, details={"error": code,
                             "detail": message})  # fmt: skip
    with platform.engine.begin() as conn:
        audit.record(conn, entry, now=platform.now())


def submit(
    platform: Platform, scope: RequestScope, request: CommandRequest, *, idempotency_key: str | None = None
) -> CommandView:
    """Authorise, validate, guard, sign and queue one command; returns it (202 semantics: not yet sent).

    The same ``idempotency_key`` from the same principal returns the command it created (a different
    request with it: IdempotencyKeyReused, 409). Raises PermissionDenied, NotFound, MeterHasNoSwitch,
    InvalidInput, CommandConflict, or the guard's refusal.
    """
    return submit_batch(platform, scope, [request], idempotency_key=idempotency_key)[0]


def submit_batch(
    platform: Platform,
    scope: RequestScope,
    requests: Sequence[CommandRequest],
    *,
    idempotency_key: str | None = None,
) -> list[CommandView]:
    """Several commands of one kind (one per meter) as one batch, all or none, admitted by the guard at once."""
    now = platform.now()
    action = ACTIONS.get(requests[0].command, "switch.command") if requests else "switch.command"
    resource = f"meter:{requests[0].meter_id}" if len(requests) == 1 else f"meters:{len(requests)}"
    try:
        views = _submit(platform, scope, requests, idempotency_key, now)
    except IntegrityError:  # the same idempotency key raced in from another request: return that one
        if idempotency_key is None:
            raise
        views = _submit(platform, scope, requests, idempotency_key, now)
    except (InvalidInput, NotFound, Conflict) as exc:
        if isinstance(exc, switch_guard.GuardRefused) and not exc.audited:  # refused under SQLite's write lock
            switch_guard.record_refusal(platform.engine, scope, exc, now=now)
        _audit_refusal(platform, scope, action, resource, exc)
        raise
    if platform.commands is not None:
        platform.commands.submitted(views)
    return views


def _submit(
    platform: Platform,
    scope: RequestScope,
    requests: Sequence[CommandRequest],
    idempotency_key: str | None,
    now: datetime,
) -> list[CommandView]:
    if not requests:
        raise InvalidInput("a batch needs at least one command")
    if len(requests) > platform.settings.switch.max_batch:
        raise InvalidInput(f"at most {platform.settings.switch.max_batch} commands per batch")
    if len({r.command for r in requests}) != 1:
        raise InvalidInput("every command of a batch is the same command")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 100:
        raise InvalidInput("an idempotency key has 1-100 characters")
    unknown = {r.command for r in requests} - set(COMMAND_NAMES)
    if unknown:
        raise InvalidInput(f"unknown command {sorted(unknown)[0][:32]!r}; one of {', '.join(COMMAND_NAMES)}")
    authority = ensure_authority(platform)
    keys = _batch_keys(idempotency_key, len(requests))
    with platform.engine.begin() as conn:
        in_flight: list[_InFlight] | None = None
        if len(requests) == 1:  # one statement for the meter and its commands in flight
            meter, in_flight = _meter_in_flight(conn, requests[0].meter_id)
            found = [meter]
        else:
            found = [_meter(conn, r.meter_id) for r in requests]
        for request, meter in zip(requests, found, strict=True):
            _authorize(conn, scope, request, meter, now)
        if idempotency_key is not None:  # before the time checks: a repeat after its execute_at still answers
            existing = _existing(conn, scope, requests, keys)
            if existing is not None:
                return existing
        windows = [_check_request(r, platform, now) for r in requests]
        for meter in found:
            _check_switch(meter)
        _check_conflicts(conn, requests, in_flight)
        areas = {m.id: m.area for m in found}  # read by _meter just now, with the join the guard uses
        admission = switch_guard.admit(conn, scope, requests[0].command, list(areas), now=now, areas=areas)
        status = "queued" if admission.state == "admitted" else "awaiting-approval"
        batch_id = admission.batch_id if admission.batch_id is not None else requests[0].batch_id
        rows = [
            _insert(conn, authority, scope, request, meter, window, status=status, batch_id=batch_id,
                    idempotency_key=key, now=now)
            for request, meter, window, key in zip(requests, found, windows, keys, strict=True)
        ]  # fmt: skip
        if batch_id is None and len(rows) > 1:  # a batch of its own: named after its first command
            batch_id = rows[0].id
            ids = [row.id for row in rows]
            conn.execute(sa.update(switch_commands).where(switch_commands.c.id.in_(ids)).values(batch_id=batch_id))
            rows = [dataclasses.replace(row, batch_id=batch_id) for row in rows]
        return [_view(row) for row in rows]


def _batch_keys(idempotency_key: str | None, count: int) -> list[str | None]:
    if idempotency_key is None:
        return [None] * count
    if count == 1:
        return [idempotency_key]
    return [f"{idempotency_key}#{i}" for i in range(count)]


def _existing(
    conn: Connection, scope: RequestScope, requests: Sequence[CommandRequest], keys: Sequence[str | None]
) -> list[CommandView] | None:
    """The commands an earlier submission with the same key created; IdempotencyKeyReused if it asked otherwise."""
    rows = [repo.find_by_idempotency_key(conn, scope.principal, key) for key in keys if key is not None]
    if all(row is None for row in rows):
        return None
    if any(row is None for row in rows) or any(
        row is not None and row.request_hash != _request_hash(request)
        for row, request in zip(rows, requests, strict=True)
    ):
        raise IdempotencyKeyReused("this idempotency key was used for a different request")
    return [_view(row) for row in rows if row is not None]


# -- reading, cancelling --------------------------------------------------------------------------------


def get_command(platform: Platform, scope: RequestScope, command_id: int) -> CommandView:
    """One command; NotFound also when its meter is outside the caller's reach."""
    with platform.engine.connect() as conn:
        authorize(conn, scope, "commands.read", Resource("command", str(command_id)), now=platform.now())
        return _view(repo.get_command(conn, command_id, visible=visible_meters(scope, "commands.read")))


def list_commands(  # noqa: PLR0913 - one optional keyword per filter
    platform: Platform,
    scope: RequestScope,
    *,
    meter_id: int | None = None,
    status: str | None = None,
    batch_id: int | None = None,
    workflow: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[CommandView]:
    """Commands newest first (keyset-paged by ``before_id``), only of meters the caller may see."""
    with platform.engine.connect() as conn:
        authorize(conn, scope, "commands.read", now=platform.now())
        visible = visible_meters(scope, "commands.read")
        rows = repo.list_commands(
            conn, meter_id=meter_id, status=status, batch_id=batch_id, workflow=workflow, before_id=before_id,
            limit=limit, visible=visible,
        )  # fmt: skip
    return [_view(r) for r in rows]


def cancel_command(
    platform: Platform, scope: RequestScope, command_id: int, *, reason: str = "cancelled"
) -> CommandView:
    """Cancel a command not sent yet (awaiting approval or queued); CommandNotCancellable (409) otherwise."""
    now = platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, "commands.cancel", Resource("command", str(command_id)), now=now)
        row = repo.get_command(conn, command_id)
        moved = _move(
            conn, row, _WAITING, "cancelled", {"failure_reason": reason[:255]}, actor=scope.principal, now=now
        )
        if moved is None:
            raise CommandNotCancellable(
                f"command {command_id} is {row.status}: only a command not sent can be cancelled"
            )
        view = _view(moved)
    if platform.commands is not None:
        platform.commands.submitted([view])
    return view


def release_batch(conn: Connection, batch_id: int, *, actor: str, now: datetime) -> int:
    """For the guard's ``approve``: queue every command of a batch awaiting approval (audited); returns how many."""
    rows = repo.list_commands(conn, batch_id=batch_id, status="awaiting-approval", limit=1_000_000)
    return sum(_move(conn, row, ("awaiting-approval",), "queued", {"queued_at": now}, actor=actor, now=now)
               is not None for row in rows)  # fmt: skip


def cancel_batch(conn: Connection, batch_id: int, *, reason: str, actor: str, now: datetime) -> list[CommandView]:
    """For the guard's ``reject``: cancel every command of a batch awaiting approval (each audited, as
    ``release_batch``'s); the commands as cancelled, for the caller to publish once committed."""
    rows = repo.list_commands(conn, batch_id=batch_id, status="awaiting-approval", limit=1_000_000)
    moved = (
        _move(conn, row, ("awaiting-approval",), "cancelled", {"failure_reason": reason[:255]}, actor=actor, now=now)
        for row in rows
    )
    return [_view(row) for row in moved if row is not None]


def _move(
    conn: Connection,
    row: CommandRow,
    from_statuses: Sequence[str],
    status: str,
    values: dict[str, Any],
    *,
    actor: str,
    now: datetime,
) -> CommandRow | None:
    """One status transition and its audit entry, in ``conn``; returns the command as it is after it
    (so no caller reads it again), or None when the command had moved on (nothing written)."""
    stamp = {"sent": "sent_at", "confirmed": "confirmed_at", "failed": "failed_at", "expired": "expired_at",
             "cancelled": "cancelled_at"}.get(status)  # fmt: skip
    values = {**values, "status": status, "updated_at": now} | ({stamp: now} if stamp else {})
    moved = repo.transition(conn, row.id, from_statuses, values)
    if moved is None:
        return None
    details: dict[str, str | int | float | bool | None] = {
        "command_id": row.id, "command": row.command, "from": row.status, "status": status, "counter": row.counter,
        "reason": values.get("failure_reason"),
    }  # fmt: skip
    if "refusal" in values:
        details["refusal"] = values["refusal"]
    outcome = "failed" if status in ("failed", "expired") else "ok"
    entry = audit.AuditEntry(actor, "switch.status", outcome, resource=f"meter:{row.meter_id}", details=details)
    audit.record(conn, entry, now=now)
    return moved


async def wait_for(platform: Platform, command_id: int, timeout_s: float) -> CommandView:
    """The command once it is final (confirmed, failed, expired, cancelled), or as it is after ``timeout_s``.

    A command submitted in this process is not read at all: the queue hands its waiters the final
    status it records. Otherwise (or when another process's queue took it) it is read now and then.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    read = platform.commands is None or not platform.commands.in_flight_here(command_id)
    while True:
        queue = platform.commands
        waiting = None if queue is None else queue.waiting(command_id)  # before the read: no change is missed
        if read:
            view = await _read_view(platform, command_id)
            if view.final or loop.time() >= deadline:
                return view
        remaining = max(0.0, deadline - loop.time())
        if waiting is None:
            await asyncio.sleep(min(0.2, remaining))
        else:  # woken when this process finishes it; read again now and then (another process may have)
            await wait_until_set(waiting.event, min(2.0, remaining))
            if waiting.view is not None:
                return waiting.view
        read = True


async def _read_view(platform: Platform, command_id: int) -> CommandView:
    queue = platform.commands
    view = await (asyncio.to_thread if queue is None else queue.db)(_load_view, platform, command_id)
    if view.final and queue is not None:
        queue.settled_elsewhere(command_id)
    return view


def _load_view(platform: Platform, command_id: int) -> CommandView:
    with platform.engine.connect() as conn:
        return _view(repo.get_command(conn, command_id))


async def read_state(platform: Platform, scope: RequestScope, meter_id: int) -> SwitchStateView:
    """Ask the meter for its switch and limiter state now (``switch.read-state``, audited)."""
    now = platform.now()
    with platform.engine.begin() as conn:
        meter = _meter(conn, meter_id)
        resource = Resource("meter", str(meter_id), area=meter.area, meter_kind=meter.kind)
        authorize(conn, scope, "switch.read-state", resource, now=now)
        _check_switch(meter)
        audit.record(conn, audit.AuditEntry(scope.principal, "switch.read-state", "ok", resource=f"meter:{meter_id}"),
                     now=now)  # fmt: skip
    state = await _executor(platform).read_state(meter_id)
    return _state_view(state)


def _state_view(state: SwitchState) -> SwitchStateView:
    return SwitchStateView(**{name: getattr(state, name) for name in SwitchStateView.__dataclass_fields__})


def _executor(platform: Platform) -> CommandExecutor:
    if platform.commands is not None:
        return platform.commands.executor
    return CommandExecutor(platform.collector, slots=platform.settings.switch.slots, now=platform.now)


# -- the queue (services.switch_queue) -------------------------------------------------------------------


def start_queue(platform: Platform) -> None:
    """Start the command queue (``bootstrap.start_platform``): loads or creates the authority first."""
    from openami.services.switch_queue import CommandQueue  # noqa: PLC0415 - it imports this module

    ensure_authority(platform)
    if platform.settings.switch.enabled and platform.commands is None:
        platform.commands = CommandQueue(platform)
        platform.commands.start()


async def stop_queue(platform: Platform) -> None:
    if platform.commands is not None:
        await platform.commands.stop()
        platform.commands = None


# -- the guard's ignore-disconnects mode (added by the guard part; see services.switch_guard) --------------

MODE_PRIORITY = 900  # before every other command: the mode protects the meters from mass disconnects


def broadcast_mode(
    platform: Platform, scope: RequestScope, meter_ids: Sequence[int], *, on: bool, reason: str
) -> list[CommandView]:
    """Queue the signed IGNORE_DISCONNECTS_ON (``on``) or OFF command for each electricity meter of ``meter_ids``.

    Called by ``switch_guard.ignore_disconnects``/``clear`` and the guard's own alarm (after they recorded
    the area's mode); not a command of the public ``submit``. Each meter gets its own envelope (its own
    system title and counter, so it cannot be replayed to another meter); a mode command of the same
    meter still queued is superseded (cancelled).
    """
    command = "ignore-on" if on else "ignore-off"
    now = platform.now()
    authority = ensure_authority(platform)
    window = (now, now + timedelta(seconds=platform.settings.switch.default_valid_for_s))
    with platform.engine.begin() as conn:
        every = [_meter(conn, meter_id) for meter_id in sorted(set(meter_ids))]
        found = [m for m in every if m.kind == MeterKind.ELECTRIC]
        # the new commands first: they take the authority's counter before anything is audited, the
        # order ``submit`` takes those locks in (the other order could deadlock on PostgreSQL)
        created = [
            _insert(conn, authority, scope, CommandRequest(m.id, command, reason=reason[:255] or command,
                    priority=MODE_PRIORITY, purpose="safety", workflow="guard"), m, window, status="queued",
                    batch_id=None, idempotency_key=None, now=now)
            for m in found
        ]  # fmt: skip
        ids = {row.id for row in created}
        for row in repo.open_commands_of(conn, {m.id for m in found}, ("queued",)):
            if _GROUP[row.command] == "mode" and row.id not in ids:
                _move(conn, row, ("queued",), "cancelled", {"failure_reason": f"superseded by {command}"},
                      actor=scope.principal, now=now)  # fmt: skip
        views = [_view(row) for row in created]
    if platform.commands is not None:
        platform.commands.submitted(views)
    return views
