"""Collection status per run and communication errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.api.schemas import CollectionRunOut, CommErrorOut
from openami.services import readings as reading_services

router = APIRouter(
    prefix="/v1",
    tags=["collection"],
    responses={code: {"content": {PROBLEM_JSON: {}}} for code in (401, 403)},
)


@router.get("/collection/runs", response_model=list[CollectionRunOut])
def collection_runs(
    platform: PlatformDep, scope: Scope, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[CollectionRunOut]:
    """Collection runs, newest first: expected, received, failed and pending meters."""
    return [
        CollectionRunOut(
            id=r.id,
            kind=r.kind,
            started_at=r.started_at,
            finished_at=r.finished_at,
            expected=r.expected,
            received=r.received,
            failed=r.failed,
            pending=r.pending,
        )
        for r in reading_services.collection_runs(platform.engine, scope, limit=limit)
    ]


@router.get("/communication-errors", response_model=list[CommErrorOut])
def communication_errors(
    platform: PlatformDep,
    scope: Scope,
    meter_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommErrorOut]:
    """Failed exchanges with meters, newest first: which meter, which step, what cause."""
    return [
        CommErrorOut.model_validate(e, from_attributes=True)
        for e in reading_services.communication_errors(platform.engine, scope, meter_id=meter_id, limit=limit)
    ]
