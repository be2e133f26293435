"""Meter key rotation: one meter, a group (meter list, feeder, all; emergency re-key), and its progress.

A rotation request answers 202 at once with its id; the head-end takes it to the meters in the
background (emergency re-keys first) and ``GET /v1/keys/rotations/{id}`` reports each meter as
rotated, pending (unreachable: retried later), uncertain (transfer sent, answer lost: settled at the
next contact), failed or cancelled. Keys are never part of any answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import keys as key_services

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed (keys.rotate)"),
        (404, "unknown meter, feeder or rotation"),
        (422, "invalid request"),
    )
}
router = APIRouter(prefix="/v1", tags=["keys"], responses=_ERRORS)
MeterId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the platform's meter id")]
RotationId = Annotated[int, Path(ge=1, le=2**62, description="a rotation request's id")]


class RotateOneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emergency: bool = Field(default=False, description="keys believed compromised: goes before other rotations")


class RotateGroupIn(BaseModel):
    """Exactly one of ``meter_ids``, ``feeder_id`` or ``all``."""

    model_config = ConfigDict(extra="forbid")
    meter_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(
        default=None, max_length=key_services.MAX_METERS_PER_LIST
    )
    feeder_id: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
    all: bool = False
    emergency: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> RotateGroupIn:
        if sum((bool(self.meter_ids), self.feeder_id is not None, self.all)) != 1:
            raise ValueError("give exactly one of meter_ids, feeder_id or all")
        return self


class MeterRotationOut(BaseModel):
    meter_id: int
    serial: str
    state: str = Field(description="rotated, pending, uncertain, failed or cancelled")
    attempts: int
    last_error: str | None
    updated_at: datetime


class RotationOut(BaseModel):
    id: int
    target: str
    emergency: bool
    requested_by: str
    requested_at: datetime
    finished: bool = Field(description="no meter pending or uncertain any more")
    counts: dict[str, int]
    meters: list[MeterRotationOut]


def _out(report: key_services.RotationReport) -> RotationOut:
    return RotationOut(
        id=report.id,
        target=report.target,
        emergency=report.emergency,
        requested_by=report.requested_by,
        requested_at=report.requested_at,
        finished=report.finished,
        counts=report.counts,
        meters=[
            MeterRotationOut(
                meter_id=m.meter_id,
                serial=m.serial,
                state=m.state,
                attempts=m.attempts,
                last_error=m.last_error,
                updated_at=m.updated_at,
            )
            for m in report.meters
        ],
    )


@router.post("/meters/{meter_id}/keys/rotate", status_code=202, response_model=RotationOut)
async def rotate_meter(
    platform: PlatformDep, scope: Scope, meter_id: MeterId, body: RotateOneIn | None = None
) -> RotationOut:
    """Rotate one meter's GUEK and GAK (new keys from a CSPRNG, sent wrapped under the meter's master key)."""
    emergency = body is not None and body.emergency
    rotation_id = key_services.request_rotation(platform, scope, meter_ids=[meter_id], emergency=emergency)
    key_services.start_rotation(platform, rotation_id)
    return _out(key_services.rotation_report(platform, scope, rotation_id))


@router.post("/keys/rotations", status_code=202, response_model=RotationOut)
async def rotate_group(platform: PlatformDep, scope: Scope, body: RotateGroupIn) -> RotationOut:
    """Rotate a group: a list of meters, every meter of a feeder, or every meter (emergency re-key first)."""
    rotation_id = key_services.request_rotation(
        platform,
        scope,
        meter_ids=body.meter_ids or (),
        feeder_id=body.feeder_id,
        all_meters=body.all,
        emergency=body.emergency,
    )
    key_services.start_rotation(platform, rotation_id)
    return _out(key_services.rotation_report(platform, scope, rotation_id))


@router.get("/keys/rotations/{rotation_id}", response_model=RotationOut)
def get_rotation(
    platform: PlatformDep,
    scope: Scope,
    rotation_id: RotationId,
    meters: Annotated[bool, Query(description="include the per-meter rows")] = True,
) -> RotationOut:
    """A rotation request's progress: counts by state and (by default) every meter's state."""
    return _out(key_services.rotation_report(platform, scope, rotation_id, with_meters=meters))
