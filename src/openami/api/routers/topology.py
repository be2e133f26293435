"""Grid topology import: the request body is a CSV or GeoJSON file that replaces the whole grid."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.errors import InvalidInput
from openami.services import topology as topology_services

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed (topology.import)"),
        (422, "the file was rejected whole (every offending row is named); nothing changed"),
    )
}
router = APIRouter(prefix="/v1/topology", tags=["topology"], responses=_ERRORS)
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/geo+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


class TopologyImportOut(BaseModel):
    substations: int
    feeders: int
    transformers: int
    service_points: int
    meters: int
    premises_created: int


@router.post("", response_model=TopologyImportOut, summary="Replace the grid topology", openapi_extra=_BODY)
async def import_topology(
    request: Request,
    platform: PlatformDep,
    scope: Scope,
    format: Annotated[
        Literal["csv", "geojson"] | None, Query(description="default: from the Content-Type, else guessed")
    ] = None,
) -> TopologyImportOut:
    """The body is the file (text/csv or application/geo+json, docs/outages.md "Topology files"). It is
    validated whole before anything is written; a rejection names every offending row."""
    body = await request.body()
    if not body:
        raise InvalidInput("the request body is the topology file; it is empty")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = format or {"text/csv": "csv", "application/geo+json": "geojson"}.get(kind)
    summary = topology_services.import_topology(platform, scope, body, fmt=fmt, source="api")
    return TopologyImportOut(
        substations=summary.substations, feeders=summary.feeders, transformers=summary.transformers,
        service_points=summary.service_points, meters=summary.meters, premises_created=summary.premises_created,
    )  # fmt: skip
