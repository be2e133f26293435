"""Outages (the OMS feed over REST): list, detail with affected meters and the restoration list,
close or annotate by hand. Outage changes are also pushed to registered webhooks (``/v1/webhooks``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import outage_feed

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed (outages.read / outages.manage)"),
        (404, "unknown outage, or not in the caller's area"),
        (409, "the outage is already closed"),
        (422, "invalid request"),
    )
}
router = APIRouter(prefix="/v1/outages", tags=["outages"], responses=_ERRORS)
OutageId = Annotated[int, Path(ge=1, le=2**62, description="an outage's id")]


class OutageOut(BaseModel):
    id: int
    device_kind: str = Field(description="substation, feeder, transformer or meter")
    device_id: str
    area: str | None = Field(description="the substation the device belongs to")
    parent_id: int | None = Field(description="the larger outage this one is nested in")
    state: str = Field(description="open, restored, momentary or closed")
    cause: str = Field(description="last-gasps (inferred and confirmed by pings) or verification")
    started_at: datetime
    detected_at: datetime
    restored_at: datetime | None
    verified_at: datetime | None
    closed_at: datetime | None
    meters: int = Field(description="affected meters (inferred, not only those that sent a last gasp)")
    premises: int = Field(description="affected premises (customers)")
    critical_care: int = Field(description="affected critical-care premises")
    last_gasps: int
    pings_sent: int
    pings_answered: int
    still_dark: int = Field(description="meters restoration verification found still dark")
    version: int = Field(description="increases with every change (the OMS feed's sequence)")
    updated_at: datetime


class OutagePage(BaseModel):
    items: list[OutageOut]
    next_before_id: int | None = Field(description="pass as before_id for the next (older) page; null at the end")


class AffectedMeterOut(BaseModel):
    meter_id: int
    state: str = Field(description="dark, restored or still-dark")
    last_gasp: bool
    premise_id: str | None
    critical_care: bool
    restored_at: datetime | None
    restored_by: str | None = Field(description="push (power-up message), ping (verification)")


class NoteOut(BaseModel):
    at: datetime
    actor: str
    text: str


class OutageDetailOut(BaseModel):
    outage: OutageOut
    meters: list[AffectedMeterOut]
    restoration_list: list[int] = Field(description="meters still dark after restoration verification")
    children: list[int] = Field(description="nested outages (e.g. a transformer still dark after its feeder)")
    notes: list[NoteOut]


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=1000)


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=1000)


def _out(o: outage_feed.OutageRecord) -> OutageOut:
    return OutageOut(
        id=o.id, device_kind=str(o.device_kind), device_id=o.device_id, area=o.area, parent_id=o.parent_id,
        state=str(o.state), cause=o.cause, started_at=o.started_at, detected_at=o.detected_at,
        restored_at=o.restored_at, verified_at=o.verified_at, closed_at=o.closed_at, meters=o.meters,
        premises=o.premises, critical_care=o.critical_care, last_gasps=o.last_gasps, pings_sent=o.pings_sent,
        pings_answered=o.pings_answered, still_dark=o.still_dark, version=o.version, updated_at=o.updated_at,
    )  # fmt: skip


@router.get("", response_model=OutagePage, summary="List outages, newest first")
def list_outages(
    platform: PlatformDep,
    scope: Scope,
    state: Annotated[list[str] | None, Query(description="open, restored, momentary, closed (repeatable)")] = None,
    before_id: Annotated[int | None, Query(ge=1, description="the last id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> OutagePage:
    """Outages the caller may see (a network operator: those in their area)."""
    found = outage_feed.list_outages(platform, scope, states=tuple(state or ()), before_id=before_id, limit=limit)
    return OutagePage(items=[_out(o) for o in found], next_before_id=found[-1].id if len(found) == limit else None)


@router.get("/{outage_id}", response_model=OutageDetailOut, summary="One outage with its meters")
def get_outage(platform: PlatformDep, scope: Scope, outage_id: OutageId) -> OutageDetailOut:
    """An outage, every affected meter the caller may see, the restoration list, nested outages and notes."""
    detail = outage_feed.get_outage(platform, scope, outage_id)
    return OutageDetailOut(
        outage=_out(detail.outage),
        meters=[
            AffectedMeterOut(
                meter_id=m.meter_id,
                state=m.state,
                last_gasp=m.last_gasp,
                premise_id=m.premise_id,
                critical_care=m.critical_care,
                restored_at=m.restored_at,
                restored_by=m.restored_by,
            )
            for m in detail.meters
        ],
        restoration_list=detail.still_dark,
        children=detail.children,
        notes=[NoteOut(at=n.at, actor=n.actor, text=n.text) for n in detail.notes],
    )


@router.post("/{outage_id}/close", response_model=OutageOut, summary="Close an outage by hand")
async def close_outage(
    platform: PlatformDep, scope: Scope, outage_id: OutageId, body: CloseIn | None = None
) -> OutageOut:
    """Close it (e.g. confirmed in the field), with an optional note; published to the OMS feed (outages.manage)."""
    return _out(await outage_feed.close_outage(platform, scope, outage_id, note=body.note if body else None))


@router.post("/{outage_id}/notes", response_model=OutageOut, summary="Annotate an outage")
async def annotate_outage(platform: PlatformDep, scope: Scope, outage_id: OutageId, body: NoteIn) -> OutageOut:
    """Add a note (crew dispatched, cause found ...); published to the OMS feed (outages.manage)."""
    return _out(await outage_feed.annotate_outage(platform, scope, outage_id, body.text))
