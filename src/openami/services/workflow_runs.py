"""Running the switch workflows (``services.workflows`` starts them): each step recorded, a failed one stops it.

A workflow's commands go through ``services.switch`` as the requesting principal with the operator's
switch rights (the workflow's own action was authorised when it started); each submission carries an
idempotency key per workflow and step, so running a workflow again never sends a command twice. A
command that did not reach the meter in time is cancelled: no switch moves later behind the
workflow's back. Every step is a row, and the end of the run is audited.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
import structlog

from openami.bus import topics
from openami.db import workflows as db
from openami.db.tables import switch_commands
from openami.db.workflows import Workflow
from openami.errors import MeterCommunicationError, OpenAmiError
from openami.security import audit, events
from openami.security.audit import AuditEntry
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import switch
from openami.services.context import Platform
from openami.services.switch import CommandRequest, CommandView, LimitParameters

__all__ = ["ACTIONS", "APPROVAL_WAIT_S", "COMMAND_WAIT_S", "PRIORITY", "SHED_PRIORITY", "run", "start_background",
           "stop_background"]  # fmt: skip

ACTIONS = {"move-in": "service.move-in", "move-out": "service.move-out", "non-payment": "collections.disconnect",
           "reinstate": "collections.reinstate", "shed": "load.shed", "restore": "load.shed",
           "limit": "switch.limit"}  # fmt: skip
BACKFEED_MAX_V = 10.0  # above this on the load side of an open switch, something feeds the premises
SUPPLY_MIN_V = 100.0  # "voltage present" after a reconnect
PRIORITY = 100  # workflow commands: before other queued commands; commands always go before collection
SHED_PRIORITY = 500  # emergency load shedding: before everything else
COMMAND_WAIT_S = 120.0  # how long a step waits for the meter's confirmation of a command due now
APPROVAL_WAIT_S = 3600.0  # how long a held shed batch waits for its second approver
_log = structlog.get_logger("openami.workflows")
_background: dict[int, set[asyncio.Task[Workflow]]] = {}


class _Stop(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step, self.reason = step, reason


def _acting(principal: str) -> RequestScope:
    """The scope a workflow's commands are submitted with: the requester, with the operator's switch rights."""
    return RequestScope(principal=principal, roles=frozenset({Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES}))


# --- running -------------------------------------------------------------------------------------


class _Run:
    """One run of one workflow: records each step (its own short transaction) and stops at a failed one."""

    def __init__(self, platform: Platform, workflow: Workflow) -> None:
        self.platform = platform
        self.workflow = workflow
        self.scope = _acting(workflow.requested_by)
        self.tag = f"{workflow.kind}:{workflow.id}"[:32]

    @property
    def meter_id(self) -> int:
        assert self.workflow.meter_id is not None
        return self.workflow.meter_id

    def _write(self, step: str, outcome: str, detail: str, command_id: int | None) -> None:
        with self.platform.engine.begin() as conn:
            db.add_step(conn, self.workflow.id, step, outcome, detail, command_id=command_id, now=self.platform.now())

    async def ok(self, step: str, detail: str, command_id: int | None = None, *, outcome: str = "ok") -> None:
        await asyncio.to_thread(self._write, step, outcome, detail, command_id)

    async def fail(self, step: str, reason: str, command_id: int | None = None) -> None:
        await asyncio.to_thread(self._write, step, "failed", reason, command_id)
        raise _Stop(step, reason)

    async def state(self, step: str) -> switch.SwitchStateView:
        try:
            return await switch.read_state(self.platform, self.scope, self.meter_id)
        except MeterCommunicationError as exc:
            await self.fail(step, f"the meter did not answer the state query ({exc.step}: {exc.message})")
            raise  # unreachable: fail raises
        except OpenAmiError as exc:
            await self.fail(step, f"state query refused: {exc.message}")
            raise

    def _request(self, command: str, *, execute_at: datetime | None = None,
                 limit: LimitParameters | None = None) -> CommandRequest:  # fmt: skip
        return CommandRequest(meter_id=self.meter_id, command=command, execute_at=execute_at, limit=limit,
                              reason=f"workflow {self.workflow.id} ({self.workflow.kind})", priority=PRIORITY,
                              purpose="operations", workflow=self.tag)  # fmt: skip

    async def command(self, step: str, request: CommandRequest, *, wait_s: float = COMMAND_WAIT_S) -> CommandView:
        """Submit one command (idempotent per workflow and step) and wait for the meter's confirmation."""
        key = f"workflow-{self.workflow.id}-{step}"
        try:
            view = await asyncio.to_thread(switch.submit, self.platform, self.scope, request, idempotency_key=key)
        except OpenAmiError as exc:
            await self.fail(step, f"{request.command} refused: {exc.message}")
        view = await switch.wait_for(self.platform, view.id, wait_s)
        if view.status == "confirmed":
            return view
        if not view.final:  # not sent in time: cancel it so the switch does not move behind the workflow's back
            view = await asyncio.to_thread(self._cancel, view)
        why = view.failure_reason or "no confirmation in time"
        await self.fail(step, f"{request.command} command {view.id} {view.status}: {why}", view.id)
        raise AssertionError("unreachable")

    def _cancel(self, view: CommandView) -> CommandView:
        try:
            return switch.cancel_command(self.platform, self.scope, view.id, reason="workflow gave up waiting")
        except OpenAmiError:  # already sent: its outcome is unknown, say so
            return dataclasses.replace(view, failure_reason=f"still {view.status} when the workflow gave up waiting; "
                                       "check the switch state")  # fmt: skip


async def _move_in(run: _Run) -> str:
    try:
        readings = await run.platform.collector.read_on_demand(run.meter_id, hours=2)
    except MeterCommunicationError as exc:
        await run.fail("read", f"{exc.step}: {exc.message}")
    await run.platform.bus.publish(topics.READINGS_COLLECTED, readings)  # the new customer's opening read, stored
    registers = ", ".join(f"{r.obis} {r.value:.0f} {r.unit}" for r in readings.registers) or "no registers"
    await run.ok("read", f"{len(readings.interval_ends)} intervals; {registers}")
    state = await run.state("backfeed-check")
    if state.output_state:
        await run.ok(
            "backfeed-check", "the switch is already closed: no backfeed check, no reconnect", outcome="skipped"
        )
    else:
        await _backfeed_check(run, state)
        view = await run.command("reconnect", run._request("reconnect"))
        await run.ok("reconnect", f"confirmed: switch {'closed' if view.output_state else 'open'}", view.id)
    state = await run.state("verify")
    if not state.output_state or state.voltage_v is None or state.voltage_v < SUPPLY_MIN_V:
        await run.fail("verify", f"after the reconnect the meter reports switch {_switch_word(state)} and "
                       f"{_volts(state.voltage_v)} supply voltage")  # fmt: skip
    await run.ok("verify", f"connected, {_volts(state.voltage_v)}")
    await run.ok("confirm", f"meter {run.meter_id} supplied")
    return "completed"


async def _backfeed_check(run: _Run, state: switch.SwitchStateView) -> None:
    load_side = state.load_side_voltage_v
    if load_side is None:
        await run.fail("backfeed-check", "the meter did not report its load-side voltage")
    elif load_side > BACKFEED_MAX_V:
        await asyncio.to_thread(_backfeed_event, run, load_side)
        await run.fail("backfeed-check", f"backfeed: {load_side:.0f} V on the load side while the switch is open "
                       "(a generator or a bypass feeds the premises); not reconnecting, send a field crew")  # fmt: skip
    else:
        await run.ok("backfeed-check", f"load side {load_side:.1f} V with the switch open: no backfeed")


def _backfeed_event(run: _Run, volts: float) -> None:
    with run.platform.engine.begin() as conn:
        events.raise_event(conn, "field.backfeed", now=run.platform.now(), meter_id=run.meter_id,
                           actor=run.workflow.requested_by,
                           details={"workflow": run.workflow.id, "load_side_v": round(volts, 1)})  # fmt: skip


def _volts(value: float | None) -> str:
    return "no" if value is None else f"{value:.0f} V"


def _switch_word(state: switch.SwitchStateView) -> str:
    return {True: "closed", False: "open", None: "unknown"}[state.output_state]


async def _disconnect_verify_final(run: _Run, execute_at: datetime | None) -> str:
    wait_s = COMMAND_WAIT_S
    if execute_at is not None:
        wait_s += max(0.0, (execute_at - run.platform.now()).total_seconds())
    view = await run.command("disconnect", run._request("disconnect", execute_at=execute_at), wait_s=wait_s)
    await run.ok("disconnect", f"confirmed at {view.confirmed_at}", view.id)
    state = await run.state("verify")
    if state.output_state is not False:
        await run.fail("verify", f"after a confirmed disconnect the meter reports switch {_switch_word(state)}")
    await run.ok("verify", f"disconnected; load side {_volts(state.load_side_voltage_v)}")
    if view.final_import_wh is None:
        await run.fail("final-read", "the disconnect confirmation carried no final registers", view.id)
    await run.ok("final-read", f"import {view.final_import_wh:.0f} Wh, export {view.final_export_wh or 0:.0f} Wh "
                 f"at {view.final_read_at}", view.id)  # fmt: skip
    return "completed"


async def _move_out(run: _Run) -> str:
    raw = run.workflow.parameters.get("execute_at")
    return await _disconnect_verify_final(run, None if raw is None else datetime.fromisoformat(raw))


async def _non_payment(run: _Run) -> str:
    return await _disconnect_verify_final(run, None)


async def _reinstate(run: _Run) -> str:
    arm = bool(run.workflow.parameters.get("arm"))
    command = "reconnect-arm" if arm else "reconnect"
    view = await run.command(command, run._request(command))
    await run.ok(command, "confirmed", view.id)
    state = await run.state("verify")
    if arm and state.control_state != 2 and not state.output_state:  # 2: ready for the customer to close
        await run.fail("verify", f"the switch is not armed (control state {state.control_state})")
    if not arm and not state.output_state:
        await run.fail("verify", f"after the reconnect the meter reports switch {_switch_word(state)}")
    await run.ok("verify", "armed: the customer can close the switch" if arm and not state.output_state
                 else f"connected, {_volts(state.voltage_v)}")  # fmt: skip
    return "completed"


async def _limit(run: _Run) -> str:
    p = run.workflow.parameters
    limit = LimitParameters(int(p["threshold_w"]), int(p["duration_s"]), bool(p.get("emergency")))
    view = await run.command("limit", run._request("limit", limit=limit))
    await run.ok("limit", f"confirmed: threshold {view.active_threshold_w} W", view.id)
    state = await run.state("verify")
    if state.active_threshold_w is None or round(state.active_threshold_w) != limit.threshold_w:
        await run.fail("verify", f"the meter reports threshold {state.active_threshold_w}, not {limit.threshold_w} W")
    await run.ok("verify", f"limited to {limit.threshold_w} W for {limit.duration_s} s")
    return "completed"


def _tag_statuses(platform: Platform, tag: str) -> dict[int, tuple[int, str, str | None]]:
    """The commands a shed or restore sent: id → (meter, status, failure reason)."""
    sc = switch_commands.c
    with platform.engine.connect() as conn:
        rows = conn.execute(sa.select(sc.id, sc.meter_id, sc.status, sc.failure_reason).where(sc.workflow == tag))
        return {int(i): (int(m), str(s), r) for i, m, s, r in rows}


async def _await_all(run: _Run, timeout_s: float) -> dict[int, tuple[int, str, str | None]]:
    """Poll the workflow's commands until every one is final (or ``timeout_s``); the state follows approval."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    held = False
    while True:
        found = await asyncio.to_thread(_tag_statuses, run.platform, run.tag)
        waiting = any(s == "awaiting-approval" for _, s, _ in found.values())
        if waiting != held:
            held = waiting
            await asyncio.to_thread(_set_state, run, "awaiting-approval" if held else "running")
        remaining = deadline - loop.time()
        if all(s in ("confirmed", "failed", "expired", "cancelled") for _, s, _ in found.values()) or remaining <= 0:
            return found
        await asyncio.sleep(min(0.2, remaining))  # one query for all of them, five times a second


def _set_state(run: _Run, state: str) -> None:
    with run.platform.engine.begin() as conn:
        db.set_state(conn, run.workflow.id, state, now=run.platform.now())


async def _submit_all(run: _Run, requests: Sequence[CommandRequest]) -> list[CommandView]:
    size = run.platform.settings.switch.max_batch
    views: list[CommandView] = []
    for start in range(0, len(requests), size):
        key = f"workflow-{run.workflow.id}-{start // size}"
        try:
            views += await asyncio.to_thread(switch.submit_batch, run.platform, run.scope,
                                             requests[start : start + size], idempotency_key=key)  # fmt: skip
        except OpenAmiError as exc:
            await run.fail("submit", f"{len(views)} of {len(requests)} commands submitted, then refused: {exc.message}")
    held = sorted({v.batch_id for v in views if v.status == "awaiting-approval" and v.batch_id is not None})
    detail = f"{len(views)} {requests[0].command} commands queued at priority {requests[0].priority}"
    if held:
        detail += f"; held for a second approver (two-person rule): batch {', '.join(map(str, held))}"
    await run.ok("submit", detail)
    return views


async def _confirm_all(run: _Run, views: Sequence[CommandView]) -> str:
    held = any(v.status == "awaiting-approval" for v in views)
    found = await _await_all(run, (APPROVAL_WAIT_S if held else 0) + COMMAND_WAIT_S)
    for command_id, (_meter, status, _why) in found.items():
        if status in ("awaiting-approval", "queued"):  # not sent in time: never later, behind our back
            view = await asyncio.to_thread(_switch_cancel, run, command_id)
            found[command_id] = (_meter, view, None)
    confirmed = sum(1 for _, s, _ in found.values() if s == "confirmed")
    if confirmed == len(found):
        await run.ok("confirm", f"all {confirmed} meters confirmed")
        return "completed"
    problems = [f"meter {m}: {s}" + (f" ({why})" if why else "") for m, s, why in found.values() if s != "confirmed"]
    await run.fail("confirm", f"{confirmed} of {len(found)} meters confirmed; " + "; ".join(problems[:5]))
    return "failed"


def _switch_cancel(run: _Run, command_id: int) -> str:
    try:
        return switch.cancel_command(run.platform, run.scope, command_id, reason="workflow gave up waiting").status
    except OpenAmiError:
        return "unknown"


async def _shed(run: _Run) -> str:
    p = run.workflow.parameters
    mode = str(p["mode"])
    limit = None if mode != "limit" else LimitParameters(int(p["threshold_w"]), int(p["duration_s"]), True)
    requests = [
        CommandRequest(
            meter_id=int(m),
            command=mode,
            limit=limit,
            priority=SHED_PRIORITY,
            purpose="safety",
            reason=f"load shedding: {p['reason']}"[:255],
            workflow=run.tag,
        )
        for m in p["meters"]
    ]
    return await _confirm_all(run, await _submit_all(run, requests))


def _shed_meters(platform: Platform, shed_id: int) -> list[int]:
    sc = switch_commands.c
    query = sa.select(sc.meter_id).where(sc.workflow == f"shed:{shed_id}", sc.status == "confirmed").distinct()
    with platform.engine.connect() as conn:
        return sorted(int(m) for m in conn.execute(query).scalars())


async def _restore(run: _Run) -> str:
    p = run.workflow.parameters
    shed = await asyncio.to_thread(_shed_meters, run.platform, int(p["shed"]))
    if not shed:
        await run.ok("submit", "the shed left no meter to restore", outcome="skipped")
        return "completed"
    command = "reconnect" if p.get("mode") == "disconnect" else "cancel-limit"
    requests = [CommandRequest(meter_id=m, command=command, priority=SHED_PRIORITY, purpose="safety",
                               reason=f"restore after shed {p['shed']}", workflow=run.tag) for m in shed]  # fmt: skip
    return await _confirm_all(run, await _submit_all(run, requests))


_RUNNERS = {"move-in": _move_in, "move-out": _move_out, "non-payment": _non_payment, "reinstate": _reinstate,
            "limit": _limit, "shed": _shed, "restore": _restore}  # fmt: skip


def _load(platform: Platform, workflow_id: int) -> Workflow:
    with platform.engine.connect() as conn:
        return db.get(conn, workflow_id)


def _finish(platform: Platform, workflow: Workflow, state: str, step: str | None, reason: str | None) -> None:
    now = platform.now()
    with platform.engine.begin() as conn:
        db.finish(conn, workflow.id, state, now=now, step=step, reason=reason)
        details: dict[str, str | int | float | bool | None] = {
            "workflow": workflow.id,
            "kind": workflow.kind,
            "state": state,
            "step": step,
            "reason": reason,
        }
        entry = AuditEntry(actor="system:workflows", action=ACTIONS[workflow.kind], outcome="ok" if state == "completed"
                           else "failed", resource=workflow.target, details=details)  # fmt: skip
        audit.record(conn, entry, now=now)


async def run(platform: Platform, workflow_id: int) -> Workflow:
    """Take a started workflow through its steps; returns it finished (completed or failed, with the step and why)."""
    workflow = await asyncio.to_thread(_load, platform, workflow_id)
    if workflow.state in db.FINAL_STATES:
        return workflow
    try:
        state = await _RUNNERS[workflow.kind](_Run(platform, workflow))
        await asyncio.to_thread(_finish, platform, workflow, state, None, None)
    except _Stop as stop:
        await asyncio.to_thread(_finish, platform, workflow, "failed", stop.step, stop.reason)
    except Exception as exc:  # noqa: BLE001 - the row must say what happened, whatever it was
        current = (await asyncio.to_thread(_load, platform, workflow_id)).step
        _log.error("workflow.error", workflow=workflow_id, error=type(exc).__name__)
        why = exc.message if isinstance(exc, OpenAmiError) else f"internal error: {type(exc).__name__}"
        await asyncio.to_thread(_finish, platform, workflow, "failed", current, why)
    return await asyncio.to_thread(_load, platform, workflow_id)


def start_background(platform: Platform, workflow_id: int) -> asyncio.Task[Workflow]:
    """``run`` in the background of the running event loop (the API answers at once)."""
    task = asyncio.get_running_loop().create_task(run(platform, workflow_id), name=f"workflow.{workflow_id}")
    tasks = _background.setdefault(id(platform), set())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def stop_background(platform: Platform) -> None:
    """Stop running workflows (a stopped one stays "running" in its row; its commands keep their own state)."""
    tasks = _background.pop(id(platform), set())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
