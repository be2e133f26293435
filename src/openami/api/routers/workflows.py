"""Switch workflows: move-in, move-out, non-payment disconnect and reinstatement, load shedding and
restoration, limited demand.

Starting one answers 202 at once with the workflow (state "running"); the platform takes it through
its steps in the background and ``GET /v1/workflows/{id}`` shows each step's outcome. A workflow that
stops names the step and the reason (e.g. backfeed on the load side, a refused command, a failed
verification). A non-payment disconnect of a critical-care premises is refused (409 ``critical-care``),
and so is one at a time the disconnect calendar forbids (409 ``disconnect-calendar``, naming the rule).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import workflows

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed"),
        (404, "unknown meter, area or workflow"),
        (409, "critical care, the disconnect calendar, or a shed still running"),
        (422, "invalid request"),
    )
}
router = APIRouter(prefix="/v1/workflows", tags=["workflows"], responses=_ERRORS)
WorkflowId = Annotated[int, Path(ge=1, le=2**62, description="a workflow's id")]
MeterIdField = Annotated[int, Field(ge=1, le=2**31 - 1, description="the platform's meter id")]
TopologyId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]


class StepOut(BaseModel):
    step: str
    outcome: str = Field(description="ok, failed or skipped")
    detail: str
    command_id: int | None = Field(description="the switch command the step sent")
    at: datetime


class WorkflowOut(BaseModel):
    id: int
    kind: str
    meter_id: int | None
    target: str
    state: str = Field(description="running, awaiting-approval, completed or failed")
    step: str = Field(description="the step running now, or the last one")
    failure_step: str | None
    failure_reason: str | None
    parameters: dict[str, Any]
    requested_by: str
    requested_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    steps: list[StepOut]


def _out(w: workflows.Workflow) -> WorkflowOut:
    return WorkflowOut(
        id=w.id, kind=w.kind, meter_id=w.meter_id, target=w.target, state=w.state, step=w.step,
        failure_step=w.failure_step, failure_reason=w.failure_reason, parameters=w.parameters,
        requested_by=w.requested_by, requested_at=w.requested_at, updated_at=w.updated_at,
        finished_at=w.finished_at,
        steps=[StepOut(step=s.step, outcome=s.outcome, detail=s.detail, command_id=s.command_id, at=s.at)
               for s in w.steps],
    )  # fmt: skip


class MeterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    meter_id: MeterIdField


class MoveOutIn(MeterIn):
    execute_at: datetime | None = Field(default=None, description="when to disconnect (with time zone); now if absent")


class ReinstateIn(MeterIn):
    arm: bool = Field(default=False, description="arm the switch for the customer to close instead of closing it")


class LimitIn(MeterIn):
    threshold_w: int = Field(ge=1, le=10_000_000, description="demand above which the meter opens, W")
    duration_s: int = Field(ge=1, le=86_400, description="how long the limit applies, s")
    emergency: bool = False


class ShedIn(BaseModel):
    """Exactly one of ``meter_ids``, ``feeder_id``, ``transformer_id``, ``area``."""

    model_config = ConfigDict(extra="forbid")
    meter_ids: list[MeterIdField] | None = Field(default=None, max_length=100_000)
    feeder_id: TopologyId | None = None
    transformer_id: TopologyId | None = None
    area: TopologyId | None = None
    mode: Literal["limit", "disconnect"] = Field(description="limited demand, or a disconnect")
    threshold_w: int | None = Field(default=None, ge=1, le=10_000_000, description="for mode limit, W")
    duration_s: int = Field(default=3600, ge=1, le=86_400)
    reason: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")

    @model_validator(mode="after")
    def _one_target(self) -> ShedIn:
        given = (bool(self.meter_ids), self.feeder_id is not None, self.transformer_id is not None,
                 self.area is not None)  # fmt: skip
        if sum(given) != 1:
            raise ValueError("give exactly one of meter_ids, feeder_id, transformer_id or area")
        if self.mode == "limit" and self.threshold_w is None:
            raise ValueError("mode limit needs threshold_w")
        return self


def _started(platform: PlatformDep, scope: Scope, workflow_id: int) -> WorkflowOut:
    workflows.start_background(platform, workflow_id)
    return _out(workflows.get_workflow(platform, scope, workflow_id))


@router.post("/move-in", status_code=202, response_model=WorkflowOut, summary="Move-in: read, backfeed check, connect")
async def move_in(platform: PlatformDep, scope: Scope, body: MeterIn) -> WorkflowOut:
    """On-demand read → backfeed check (no voltage on the load side of the open switch) → reconnect →
    verify (connected, voltage present) → confirm (``service.move-in``)."""
    return _started(platform, scope, workflows.start_move_in(platform, scope, body.meter_id))


@router.post("/move-out", status_code=202, response_model=WorkflowOut, summary="Move-out: disconnect at a set time")
async def move_out(platform: PlatformDep, scope: Scope, body: MoveOutIn) -> WorkflowOut:
    """Disconnect at ``execute_at`` → verify → final read (``service.move-out``)."""
    workflow_id = workflows.start_move_out(platform, scope, body.meter_id, execute_at=body.execute_at)
    return _started(platform, scope, workflow_id)


@router.post("/non-payment", status_code=202, response_model=WorkflowOut, summary="Disconnect for non-payment")
async def non_payment(platform: PlatformDep, scope: Scope, body: MeterIn) -> WorkflowOut:
    """Never a critical-care premises, never when the calendar forbids it (409 naming the rule); then
    disconnect → verify → final read (``collections.disconnect``)."""
    return _started(platform, scope, workflows.start_non_payment(platform, scope, body.meter_id))


@router.post("/reinstate", status_code=202, response_model=WorkflowOut, summary="Reconnect after payment")
async def reinstate(platform: PlatformDep, scope: Scope, body: ReinstateIn) -> WorkflowOut:
    """Reconnect (or arm for the customer) → verify (``collections.reinstate``)."""
    return _started(platform, scope, workflows.start_reinstate(platform, scope, body.meter_id, arm=body.arm))


@router.post("/limit", status_code=202, response_model=WorkflowOut, summary="Limited demand on one meter")
async def limit(platform: PlatformDep, scope: Scope, body: LimitIn) -> WorkflowOut:
    """A signed limit command with threshold and duration → verify the meter's active threshold (``switch.limit``)."""
    workflow_id = workflows.start_limit(platform, scope, body.meter_id, threshold_w=body.threshold_w,
                                        duration_s=body.duration_s, emergency=body.emergency)  # fmt: skip
    return _started(platform, scope, workflow_id)


@router.post("/shed", status_code=202, response_model=WorkflowOut, summary="Emergency load shedding")
async def shed(platform: PlatformDep, scope: Scope, body: ShedIn) -> WorkflowOut:
    """Limit or disconnect every meter of the target except critical-care premises, at a priority above
    everything else (``load.shed``). Above the two-person size the batch waits for a second approver."""
    target = workflows.ShedTarget(meter_ids=tuple(body.meter_ids or ()), feeder_id=body.feeder_id,
                                  transformer_id=body.transformer_id, area=body.area)  # fmt: skip
    workflow_id = workflows.start_shed(platform, scope, target, mode=body.mode, threshold_w=body.threshold_w,
                                       duration_s=body.duration_s, reason=body.reason)  # fmt: skip
    return _started(platform, scope, workflow_id)


@router.post("/{workflow_id}/restore", status_code=202, response_model=WorkflowOut, summary="Restore after a shed")
async def restore(platform: PlatformDep, scope: Scope, workflow_id: WorkflowId) -> WorkflowOut:
    """Reconnect (or cancel the limit of) every meter a finished shed workflow shed (``load.shed``)."""
    return _started(platform, scope, workflows.start_restore(platform, scope, workflow_id))


@router.get("", response_model=list[WorkflowOut], summary="Workflows, newest first")
def list_all(
    platform: PlatformDep,
    scope: Scope,
    kind: Annotated[Literal["move-in", "move-out", "non-payment", "reinstate", "shed", "restore", "limit"] | None,
                    Query()] = None,
    state: Annotated[Literal["running", "awaiting-approval", "completed", "failed"] | None, Query()] = None,
    meter_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[WorkflowOut]:  # fmt: skip
    """Without their steps (``commands.read``)."""
    found = workflows.list_workflows(platform, scope, kind=kind, state=state, meter_id=meter_id, limit=limit)
    return [_out(w) for w in found]


@router.get("/{workflow_id}", response_model=WorkflowOut, summary="One workflow and its steps")
def get_one(platform: PlatformDep, scope: Scope, workflow_id: WorkflowId) -> WorkflowOut:
    """Its state, and each step's outcome, detail and command (``commands.read``)."""
    return _out(workflows.get_workflow(platform, scope, workflow_id))
