"""Switch and limiter commands: disconnect, reconnect, load limit, batches, status, cancel, state query.

A command answers 202 at once with the command (status queued, or awaiting-approval when the
off-switch guard wants a second person) and a ``Location``; the platform's queue takes it to the
meter, signed by the command authority, and ``GET /v1/commands/{id}`` follows it to confirmed (with
the meter's switch state, voltage, current and, after a disconnect, the final register read),
failed (the meter's refusal reason or the error), expired or cancelled. ``Idempotency-Key``: the same
key from the same caller returns the command it created instead of a second one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import switch as switch_services
from openami.services.switch import CommandRequest, CommandView, LimitParameters, SwitchStateView

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed (switch.*, commands.*)"),
        (404, "unknown meter or command"),
        (409, "a conflicting command is in flight, the idempotency key was used for another request, "
              "or the command can no longer be cancelled"),
        (422, "invalid request: a meter without a switch, invalid limits or times"),
    )
}  # fmt: skip
router = APIRouter(prefix="/v1", tags=["commands"], responses=_ERRORS)
MeterId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the platform's meter id")]
CommandId = Annotated[int, Path(ge=1, le=2**62, description="a command's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=100, description="repeat-safe submission key"),
]
Status = Literal["awaiting-approval", "queued", "sent", "confirmed", "failed", "expired", "cancelled"]


class _CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    execute_at: datetime | None = Field(default=None, description="when to act (ISO 8601 with zone); now if absent")
    valid_for_s: int | None = Field(
        default=None, ge=10, le=30 * 86_400, description="how long after execute_at the meter may still act"
    )
    reason: str = Field(default="operator request", min_length=1, max_length=255)
    priority: int = Field(default=0, ge=-1000, le=1000, description="higher goes first")
    purpose: str | None = Field(default=None, max_length=32, description="declared purpose, e.g. 'safety'")


class DisconnectIn(_CommandIn):
    """Open the supply switch."""


class ReconnectIn(_CommandIn):
    """Close the switch at once (``immediate``), or arm it for the customer to close (``armed``)."""

    mode: Literal["immediate", "armed"] = "immediate"


class LimitIn(_CommandIn):
    """A demand limit: trip when demand stays above ``threshold_w`` for ``duration_s``."""

    threshold_w: int = Field(ge=1, le=10_000_000)
    duration_s: int = Field(ge=1, le=86_400)
    emergency: bool = Field(default=False, description="the emergency threshold (an emergency profile)")


class BatchLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold_w: int = Field(ge=1, le=10_000_000)
    duration_s: int = Field(ge=1, le=86_400)
    emergency: bool = False


class BatchIn(_CommandIn):
    """One command for many meters, all or none (the guard admits the batch as a whole)."""

    command: Literal["disconnect", "reconnect", "reconnect-arm", "limit", "cancel-limit"]
    meter_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=10_000)
    limit: BatchLimit | None = None


class CommandOut(BaseModel):
    id: int
    meter_id: int
    command: str = Field(description="disconnect, reconnect, reconnect-arm, limit or cancel-limit")
    status: str = Field(description="awaiting-approval, queued, sent, confirmed, failed, expired or cancelled")
    counter: int = Field(description="the command authority's originator counter in the signed envelope")
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
    failure_reason: str | None = Field(description="always set on failed and expired")
    refusal: str | None = Field(description="the meter's refusal reason (bad-signature, replayed, expired ...)")
    created_at: datetime
    queued_at: datetime | None
    sent_at: datetime | None
    confirmed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelled_at: datetime | None
    output_state: bool | None = Field(description="confirmed switch state: true = connected")
    control_state: int | None = Field(description="0 disconnected, 1 connected, 2 ready for reconnection")
    voltage_v: float | None
    current_a: float | None
    load_side_voltage_v: float | None
    active_threshold_w: int | None
    final_import_wh: float | None = Field(description="final register read after a confirmed disconnect")
    final_export_wh: float | None
    final_read_at: datetime | None


class CommandPage(BaseModel):
    items: list[CommandOut]
    next_before_id: int | None = Field(description="pass as before_id for the next (older) page; null at the end")


class SwitchStateOut(BaseModel):
    meter_id: int
    read_at: datetime
    output_state: bool | None = Field(description="true = connected")
    control_state: int | None = Field(description="0 disconnected, 1 connected, 2 ready for reconnection")
    control_mode: int | None
    active_threshold_w: float | None
    voltage_v: float | None
    current_a: float | None
    active_power_w: float | None
    load_side_voltage_v: float | None
    last_counter: int | None = Field(description="the last originator counter the meter accepted")
    ignore_disconnects: bool | None


def _out(view: CommandView) -> CommandOut:
    return CommandOut.model_validate(view, from_attributes=True)


def _state_out(view: SwitchStateView) -> SwitchStateOut:
    return SwitchStateOut.model_validate(view, from_attributes=True)


def _request(meter_id: int, command: str, body: _CommandIn, limit: LimitParameters | None = None) -> CommandRequest:
    return CommandRequest(
        meter_id=meter_id,
        command=command,
        execute_at=body.execute_at,
        valid_for_s=body.valid_for_s,
        limit=limit,
        reason=body.reason,
        priority=body.priority,
        purpose=body.purpose,
    )


def _accepted(platform: PlatformDep, scope: Scope, request: CommandRequest, key: str | None, response: Response
              ) -> CommandOut:  # fmt: skip
    view = switch_services.submit(platform, scope, request, idempotency_key=key)
    response.headers["Location"] = f"/v1/commands/{view.id}"
    return _out(view)


@router.post("/meters/{meter_id}/disconnect", status_code=202, response_model=CommandOut)
def disconnect(
    platform: PlatformDep, scope: Scope, meter_id: MeterId, response: Response, key: IdempotencyKey = None,
    body: DisconnectIn | None = None,
) -> CommandOut:  # fmt: skip
    """Open the meter's supply switch (signed by the command authority; the final registers are read)."""
    return _accepted(platform, scope, _request(meter_id, "disconnect", body or DisconnectIn()), key, response)


@router.post("/meters/{meter_id}/reconnect", status_code=202, response_model=CommandOut)
def reconnect(
    platform: PlatformDep, scope: Scope, meter_id: MeterId, response: Response, key: IdempotencyKey = None,
    body: ReconnectIn | None = None,
) -> CommandOut:  # fmt: skip
    """Close the switch at once, or (mode armed) make it ready for the customer to close."""
    body = body or ReconnectIn()
    command = "reconnect" if body.mode == "immediate" else "reconnect-arm"
    return _accepted(platform, scope, _request(meter_id, command, body), key, response)


@router.post("/meters/{meter_id}/limit", status_code=202, response_model=CommandOut)
def set_limit(
    platform: PlatformDep, scope: Scope, meter_id: MeterId, body: LimitIn, response: Response,
    key: IdempotencyKey = None,
) -> CommandOut:  # fmt: skip
    """Set a load limit (limited demand): the limiter opens the switch when demand stays above it."""
    limit = LimitParameters(body.threshold_w, body.duration_s, body.emergency)
    return _accepted(platform, scope, _request(meter_id, "limit", body, limit), key, response)


@router.delete("/meters/{meter_id}/limit", status_code=202, response_model=CommandOut)
def cancel_limit(
    platform: PlatformDep, scope: Scope, meter_id: MeterId, response: Response, key: IdempotencyKey = None,
    reason: Annotated[str, Query(min_length=1, max_length=255)] = "operator request",
) -> CommandOut:  # fmt: skip
    """Remove the meter's load limit (a signed cancel-limit command)."""
    request = CommandRequest(meter_id=meter_id, command="cancel-limit", reason=reason)
    return _accepted(platform, scope, request, key, response)


@router.post("/commands/batch", status_code=202, response_model=list[CommandOut])
def submit_batch(platform: PlatformDep, scope: Scope, body: BatchIn, key: IdempotencyKey = None) -> list[CommandOut]:
    """One command for many meters, all or none; above the guard's batch size a second person approves it."""
    limit = None if body.limit is None else LimitParameters(body.limit.threshold_w, body.limit.duration_s,
                                                             body.limit.emergency)  # fmt: skip
    requests = [_request(meter_id, body.command, body, limit) for meter_id in body.meter_ids]
    return [_out(v) for v in switch_services.submit_batch(platform, scope, requests, idempotency_key=key)]


@router.get("/commands", response_model=CommandPage)
def list_commands(
    platform: PlatformDep,
    scope: Scope,
    meter_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    status: Annotated[Status | None, Query()] = None,
    batch_id: Annotated[int | None, Query(ge=1)] = None,
    before_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CommandPage:
    """Commands newest first, of the meters the caller may see; filter by meter, status or batch."""
    views = switch_services.list_commands(
        platform, scope, meter_id=meter_id, status=status, batch_id=batch_id, before_id=before_id, limit=limit
    )
    return CommandPage(items=[_out(v) for v in views], next_before_id=views[-1].id if len(views) == limit else None)


@router.get("/commands/{command_id}", response_model=CommandOut)
def get_command(platform: PlatformDep, scope: Scope, command_id: CommandId) -> CommandOut:
    """One command and its status, failure reason and confirmation."""
    return _out(switch_services.get_command(platform, scope, command_id))


@router.post("/commands/{command_id}/cancel", response_model=CommandOut)
def cancel_command(platform: PlatformDep, scope: Scope, command_id: CommandId) -> CommandOut:
    """Cancel a command that has not been sent (awaiting approval or queued); 409 once sent."""
    return _out(switch_services.cancel_command(platform, scope, command_id, reason=f"cancelled by {scope.principal}"))


@router.get("/meters/{meter_id}/switch", response_model=SwitchStateOut)
async def switch_state(platform: PlatformDep, scope: Scope, meter_id: MeterId) -> SwitchStateOut:
    """Ask the meter now: switch state and mode, active limit, voltage, current, power, load-side voltage."""
    return _state_out(await switch_services.read_state(platform, scope, meter_id))
