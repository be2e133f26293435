"""Switch workflows with their seed steps (issue 5, seed 001): each one a row with its steps, audited.

- **move-in**: on-demand read → backfeed check (with the switch open the load side must be dead,
  otherwise something feeds the premises: stop, and raise a field/security event) → reconnect →
  verify (connected, voltage present) → confirm;
- **move-out**: disconnect at a set time → verify → final read (the registers the confirmation carries);
- **non-payment** disconnect (``collections.disconnect``): never a critical-care premises, never at a
  time the disconnect calendar forbids (each refusal names the rule) → disconnect → verify → final read;
  **reinstate** on payment (``collections.reinstate``): reconnect (or arm) → verify;
- **shed** (``load.shed``): a set of meters, a feeder, a transformer or an area, critical care never
  shed, commands at a priority above bulk reads, as a limit (limited demand) or a disconnect;
  **restore** undoes a shed; **limit**: a limit command with threshold and duration, verified.

``start`` authorises the workflow's action and records the row (audited) in one transaction; ``run``
then takes it step by step (the API runs it in the background, the CLI waits). The switch commands
are submitted as the requesting principal with the operator's switch rights, which the workflow's
own action grants (a billing clerk may move a customer in without being a switch operator); the
two-person rule and the rate limits still see that principal. A step that fails stops the workflow
with the step and the reason; a command that did not reach the meter in time is cancelled, so no
switch moves later without the workflow knowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from openami.db import workflows as db
from openami.db.tables import feeders, meters, premises, service_points, transformers
from openami.db.workflows import Step, Workflow
from openami.errors import Conflict, InvalidInput, NotFound, OpenAmiError, PermissionDenied
from openami.security import audit
from openami.security.audit import AuditEntry
from openami.security.policy import RequestScope, Resource, authorize, visible_meters
from openami.services import disconnect_calendar as calendar
from openami.services.context import Platform
from openami.services.switch import MeterHasNoSwitch
from openami.services.workflow_runs import ACTIONS, PRIORITY, SHED_PRIORITY, run, start_background, stop_background

__all__ = [
    "KINDS", "PRIORITY", "SHED_PRIORITY", "CriticalCareRefused", "ShedTarget", "Step", "Workflow", "get_workflow",
    "list_workflows", "run", "start_background", "start_limit", "start_move_in", "start_move_out",
    "start_non_payment", "start_reinstate", "start_restore", "start_shed", "stop_background",
]  # fmt: skip

KINDS = tuple(ACTIONS)


class CriticalCareRefused(Conflict):
    """The premises is flagged critical-care: never disconnected for non-payment, never shed."""

    code = "critical-care"


# --- starting (authorise, check, record) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _MeterFacts:
    id: int
    area: str | None
    premise: str | None
    critical_care: bool
    kind: str


def _facts(conn: sa.Connection, meter_id: int) -> _MeterFacts:
    query = (
        sa.select(
            meters.c.id, feeders.c.substation_id, service_points.c.premise_id, premises.c.critical_care, meters.c.kind
        )
        .select_from(meters)
        .outerjoin(service_points, service_points.c.id == meters.c.service_point_id)
        .outerjoin(premises, premises.c.id == service_points.c.premise_id)
        .outerjoin(transformers, transformers.c.id == service_points.c.transformer_id)
        .outerjoin(feeders, feeders.c.id == transformers.c.feeder_id)
        .where(meters.c.id == meter_id)
    )
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"meter {meter_id} does not exist")
    return _MeterFacts(int(row[0]), row[1], row[2], bool(row[3]), str(row[4]))


def _start(
    platform: Platform,
    scope: RequestScope,
    kind: str,
    meter_id: int,
    parameters: dict[str, Any],
    *,
    now: datetime | None = None,
    purpose: str | None = "operations",
) -> int:
    """Authorise ``kind`` on one meter, run its pre-checks, record the workflow (audited); returns its id."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        facts = _facts(conn, meter_id)
        resource = Resource("meter", str(meter_id), area=facts.area, premise=facts.premise)
        authorize(conn, scope, ACTIONS[kind], resource, purpose=purpose, now=now)
    if facts.kind != "electric":
        no_switch = MeterHasNoSwitch(f"meter {meter_id} is a {facts.kind} meter: it has no supply switch or limiter")
        _refuse(platform, scope, ACTIONS[kind], meter_id, no_switch, now)
    if kind == "non-payment":
        _check_non_payment(platform, scope, facts, now)
    with platform.engine.begin() as conn:
        workflow_id = db.create(conn, kind, meter_id=meter_id, target=f"meter:{meter_id}", parameters=parameters,
                                requested_by=scope.principal, now=now)  # fmt: skip
        entry = AuditEntry(actor=scope.principal, action=ACTIONS[kind], outcome="ok", resource=f"meter:{meter_id}",
                           purpose=purpose, details={"workflow": workflow_id, "kind": kind})  # fmt: skip
        audit.record(conn, entry, now=now)
    return workflow_id


def _check_non_payment(platform: Platform, scope: RequestScope, facts: _MeterFacts, now: datetime) -> None:
    """Critical care and the calendar; a refusal is audited (its own transaction) and raised."""
    error: OpenAmiError | None = None
    if facts.critical_care:
        error = CriticalCareRefused(f"meter {facts.id}: premises {facts.premise} is flagged critical-care; "
                                    "it is never disconnected for non-payment")  # fmt: skip
    else:
        with platform.engine.connect() as conn:
            entries = calendar.entries(conn)
        why = calendar.refusal(entries, now, facts.area, calendar.zone(platform.settings.guard.timezone))
        if why is not None:
            error = calendar.CalendarRefused(f"non-payment disconnects are not allowed now: {why}")
    if error is not None:
        _refuse(platform, scope, "collections.disconnect", facts.id, error, now)


def _refuse(platform: Platform, scope: RequestScope, action: str, meter_id: int, error: OpenAmiError,
            now: datetime) -> None:  # fmt: skip
    """Audit a refused workflow (outcome denied) in its own transaction, then raise ``error``."""
    with platform.engine.begin() as conn:
        entry = AuditEntry(actor=scope.principal, action=action, outcome="denied", resource=f"meter:{meter_id}",
                           details={"code": error.code, "reason": error.message[:300]})  # fmt: skip
        audit.record(conn, entry, now=now)
    raise error


def start_move_in(platform: Platform, scope: RequestScope, meter_id: int, *, now: datetime | None = None) -> int:
    return _start(platform, scope, "move-in", meter_id, {}, now=now)


def start_move_out(
    platform: Platform, scope: RequestScope, meter_id: int, *, execute_at: datetime | None, now: datetime | None = None
) -> int:
    now = now or platform.now()
    if execute_at is not None and (execute_at.tzinfo is None or execute_at < now - timedelta(minutes=1)):
        raise InvalidInput("execute_at must be an aware time, not in the past")
    return _start(platform, scope, "move-out", meter_id, {"execute_at": execute_at}, now=now)


def start_non_payment(platform: Platform, scope: RequestScope, meter_id: int, *, now: datetime | None = None) -> int:
    """Raises CriticalCareRefused or CalendarRefused (both audited) when the disconnect is not allowed."""
    return _start(platform, scope, "non-payment", meter_id, {}, now=now, purpose="billing")


def start_reinstate(
    platform: Platform, scope: RequestScope, meter_id: int, *, arm: bool = False, now: datetime | None = None
) -> int:
    """``arm``: the switch is made ready for the customer to close (safer after a long disconnection)."""
    return _start(platform, scope, "reinstate", meter_id, {"arm": arm}, now=now, purpose="billing")


def start_limit(
    platform: Platform,
    scope: RequestScope,
    meter_id: int,
    *,
    threshold_w: int,
    duration_s: int,
    emergency: bool = False,
    now: datetime | None = None,
) -> int:
    """Limited demand: the meter opens its switch while demand stays above ``threshold_w`` (for ``duration_s``)."""
    if not (1 <= threshold_w <= 10_000_000 and 1 <= duration_s <= 86_400):
        raise InvalidInput("threshold_w must be 1-10,000,000 W and duration_s 1-86,400 s")
    parameters = {"threshold_w": threshold_w, "duration_s": duration_s, "emergency": emergency}
    return _start(platform, scope, "limit", meter_id, parameters, now=now)


@dataclass(frozen=True, slots=True)
class ShedTarget:
    """Exactly one of: meter ids, a feeder, a transformer, an area (substation)."""

    meter_ids: tuple[int, ...] = ()
    feeder_id: str | None = None
    transformer_id: str | None = None
    area: str | None = None

    def describe(self) -> str:
        named = [
            (bool(self.meter_ids), f"meters:{len(self.meter_ids)}"),
            (self.feeder_id is not None, f"feeder:{self.feeder_id}"),
            (self.transformer_id is not None, f"transformer:{self.transformer_id}"),
            (self.area is not None, f"area:{self.area}"),
        ]  # fmt: skip
        chosen = [text for given, text in named if given]
        if len(chosen) != 1:
            raise InvalidInput("name exactly one of meter ids, a feeder, a transformer or an area")
        return chosen[0]


def _shed_selection(conn: sa.Connection, scope: RequestScope, target: ShedTarget) -> tuple[list[int], list[int]]:
    """(meters to shed, critical-care meters spared) among the meters the caller may reach."""
    sp, tr, fd = service_points, transformers, feeders
    query = (
        sa.select(meters.c.id, premises.c.critical_care)
        .select_from(meters)
        .outerjoin(sp, sp.c.id == meters.c.service_point_id)
        .outerjoin(premises, premises.c.id == sp.c.premise_id)
        .outerjoin(tr, tr.c.id == sp.c.transformer_id)
        .outerjoin(fd, fd.c.id == tr.c.feeder_id)
        .where(visible_meters(scope, "load.shed"), meters.c.kind == "electric")
        .order_by(meters.c.id)
    )
    if target.meter_ids:
        query = query.where(meters.c.id.in_(sorted(set(target.meter_ids))))
    elif target.feeder_id is not None:
        query = query.where(tr.c.feeder_id == target.feeder_id)
    elif target.transformer_id is not None:
        query = query.where(sp.c.transformer_id == target.transformer_id)
    else:
        query = query.where(fd.c.substation_id == target.area)
    rows = conn.execute(query).all()
    if target.meter_ids and len(rows) != len(set(target.meter_ids)):
        found = {int(r[0]) for r in rows}
        missing = sorted(set(target.meter_ids) - found)[:5]
        raise NotFound(f"unknown electricity meters or out of reach: {missing}")
    shed = [int(m) for m, critical in rows if not critical]
    spared = [int(m) for m, critical in rows if critical]
    return shed, spared


def start_shed(  # noqa: PLR0913 - the target, then how to shed
    platform: Platform,
    scope: RequestScope,
    target: ShedTarget,
    *,
    mode: str,
    threshold_w: int | None = None,
    duration_s: int = 3600,
    reason: str,
    now: datetime | None = None,
) -> int:
    """Emergency load shedding: a limit (limited demand, ``threshold_w``) or a disconnect of every meter of
    the target but those of critical-care premises. Returns the workflow id."""
    now = now or platform.now()
    described = target.describe()
    if mode not in ("limit", "disconnect"):
        raise InvalidInput("mode is 'limit' or 'disconnect'")
    if mode == "limit" and (threshold_w is None or not 1 <= threshold_w <= 10_000_000 or not 1 <= duration_s <= 86_400):
        raise InvalidInput("a limit needs threshold_w 1-10,000,000 W and duration_s 1-86,400 s")
    if not reason.strip() or len(reason) > 200:
        raise InvalidInput("give a reason (1-200 characters)")
    with platform.engine.begin() as conn:
        # an area is checked against a network operator's own; other targets are narrowed by visible_meters
        resource = None if target.area is None else Resource("area", target.area, area=target.area)
        authorize(conn, scope, "load.shed", resource, purpose="safety", now=now)
        shed, spared = _shed_selection(conn, scope, target)
        if not shed:
            raise InvalidInput(f"{described}: no meter to shed ({len(spared)} critical-care meters spared)")
        parameters = {"mode": mode, "threshold_w": threshold_w, "duration_s": duration_s, "reason": reason,
                      "meters": shed, "spared": spared}  # fmt: skip
        workflow_id = db.create(conn, "shed", meter_id=None, target=described, parameters=parameters,
                                requested_by=scope.principal, now=now)  # fmt: skip
        db.add_step(conn, workflow_id, "select", "ok", f"{len(shed)} meters to shed, {len(spared)} critical-care "
                    "meters spared", now=now)  # fmt: skip
        entry = AuditEntry(actor=scope.principal, action="load.shed", outcome="ok", resource=described,
                           purpose="safety", details={"workflow": workflow_id, "mode": mode, "meters": len(shed),
                                                      "spared": len(spared), "reason": reason})  # fmt: skip
        audit.record(conn, entry, now=now)
    return workflow_id


def _check_reach(conn: sa.Connection, scope: RequestScope, meter_ids: list[int], shed_id: int) -> None:
    """PermissionDenied unless the caller may shed (so restore) every meter the shed named."""
    reach = sa.select(sa.func.count()).where(meters.c.id.in_(meter_ids), visible_meters(scope, "load.shed"))
    if int(conn.execute(reach).scalar_one()) != len(set(meter_ids)):
        raise PermissionDenied(f"shed {shed_id} reaches meters outside what {scope.principal} may shed")


def start_restore(
    platform: Platform, scope: RequestScope, shed_workflow_id: int, *, now: datetime | None = None
) -> int:
    """Undo a shed: reconnect (or cancel the limit of) every meter it shed."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, "load.shed", None, purpose="safety", now=now)
        shed = db.get(conn, shed_workflow_id)
        if shed.kind != "shed":
            raise InvalidInput(f"workflow {shed_workflow_id} is a {shed.kind}, not a shed")
        _check_reach(conn, scope, [int(m) for m in shed.parameters.get("meters", [])], shed_workflow_id)
        if shed.state in ("running", "awaiting-approval"):
            raise Conflict(f"shed {shed_workflow_id} is still {shed.state}")
        workflow_id = db.create(
            conn,
            "restore",
            meter_id=None,
            target=shed.target,
            requested_by=scope.principal,
            parameters={"shed": shed_workflow_id, "mode": shed.parameters.get("mode")},
            now=now,
        )
        entry = AuditEntry(
            actor=scope.principal,
            action="load.shed",
            outcome="ok",
            resource=shed.target,
            purpose="safety",
            details={"workflow": workflow_id, "restores": shed_workflow_id},
        )
        audit.record(conn, entry, now=now)
    return workflow_id


# --- reading -------------------------------------------------------------------------------------


def get_workflow(platform: Platform, scope: RequestScope, workflow_id: int) -> Workflow:
    """A workflow with its steps; readable by whoever may read commands."""
    with platform.engine.begin() as conn:
        authorize(conn, scope, "commands.read", Resource("workflow", str(workflow_id)), now=platform.now())
        return db.get(conn, workflow_id)


def list_workflows(
    platform: Platform, scope: RequestScope, *, kind: str | None = None, state: str | None = None,
    meter_id: int | None = None, limit: int = 100,
) -> list[Workflow]:  # fmt: skip
    with platform.engine.begin() as conn:
        authorize(conn, scope, "commands.read", now=platform.now())
        return db.list_workflows(conn, kind=kind, state=state, meter_id=meter_id, limit=limit)
