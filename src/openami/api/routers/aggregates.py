"""Aggregated readings: a transformer's load (summed import per interval), for network operators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import aggregates as aggregate_services

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed, or a group under the minimum size"),
        (404, "unknown transformer"),
    )
}
router = APIRouter(prefix="/v1/transformers", tags=["aggregates"], responses=_ERRORS)


class LoadIntervalOut(BaseModel):
    interval_end: datetime
    import_wh: float
    meters: int


class TransformerLoadOut(BaseModel):
    transformer_id: str
    meters: int
    min_group: int
    intervals: list[LoadIntervalOut]


@router.get("/{transformer_id}/load", response_model=TransformerLoadOut)
def transformer_load(
    platform: PlatformDep,
    scope: Scope,
    transformer_id: Annotated[str, Path(max_length=32)],
    start: Annotated[datetime, Query(alias="from", description="ISO 8601 with time zone")],
    end: Annotated[datetime, Query(alias="to", description="ISO 8601 with time zone")],
) -> TransformerLoadOut:
    """Summed active import (Wh) per interval over the transformer's meters, with how many contributed.

    Refused (403) for a group under the minimum size; intervals with fewer contributors are left out.
    """
    load = aggregate_services.transformer_load(
        platform.engine, scope, transformer_id, start, end,
        min_group=platform.settings.identity.aggregate_min_group, now=platform.now(),
    )  # fmt: skip
    return TransformerLoadOut(
        transformer_id=load.transformer_id,
        meters=load.meters,
        min_group=load.min_group,
        intervals=[
            LoadIntervalOut(interval_end=i.interval_end, import_wh=i.import_wh, meters=i.meters) for i in load.intervals
        ],
    )
