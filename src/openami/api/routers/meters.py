"""Meters, their readings and on-demand reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse, Response

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.api.schemas import IntervalOut, MeterOut, MeterPage, OnDemandReadOut, ReadingsOut, RegisterOut
from openami.domain.codes import ChannelCode
from openami.domain.meters import Meter
from openami.services import meters as meter_services
from openami.services import readings as reading_services

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in ((401, "missing or invalid token"), (403, "not allowed"), (404, "unknown meter"))
}
router = APIRouter(prefix="/v1/meters", tags=["meters"], responses=_ERRORS)
MeterId = Annotated[int, Path(ge=1, description="the platform's meter id")]


def _meter_out(meter: Meter) -> MeterOut:
    return MeterOut(
        id=meter.id,
        serial=meter.serial,
        kind=str(meter.kind),
        customer_class=str(meter.customer_class),
        host=meter.host,
        port=meter.port,
        system_title=meter.system_title.hex().upper(),
        model=meter.model,
        firmware=meter.firmware,
        service_point_id=meter.service_point_id,
    )


@router.get("", response_model=MeterPage)
def list_meters(
    platform: PlatformDep,
    scope: Scope,
    after_id: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MeterPage:
    """Meters by id, keyset-paged."""
    meters = meter_services.list_meters(platform.engine, scope, after_id=after_id, limit=limit, now=platform.now())
    total = meter_services.count_meters(platform.engine, scope, now=platform.now())
    next_after = meters[-1].id if len(meters) == limit else None
    return MeterPage(items=[_meter_out(m) for m in meters], total=total, next_after_id=next_after)


@router.get("/{meter_id}", response_model=MeterOut)
def get_meter(platform: PlatformDep, scope: Scope, meter_id: MeterId) -> MeterOut:
    return _meter_out(meter_services.get_meter(platform.engine, scope, meter_id, now=platform.now()))


@router.get(
    "/{meter_id}/readings",
    response_model=ReadingsOut,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"}},
)
def meter_readings(  # noqa: PLR0913, PLR0917 - one parameter per query parameter
    platform: PlatformDep,
    scope: Scope,
    meter_id: MeterId,
    start: Annotated[datetime, Query(alias="from", description="ISO 8601 with time zone")],
    end: Annotated[datetime, Query(alias="to", description="ISO 8601 with time zone")],
    channel: Annotated[Literal["import", "export"] | None, Query()] = None,
    fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    purpose: Annotated[str | None, Query(max_length=32, description="declared purpose, e.g. 'safety'")] = None,
) -> Response | ReadingsOut:
    """Interval values (current versions) with quality flags, source and version (personal data: audited)."""
    code = {"import": ChannelCode.ACTIVE_IMPORT, "export": ChannelCode.ACTIVE_EXPORT}.get(channel or "")
    values = reading_services.meter_readings(
        platform.engine, scope, meter_id, start, end, code, purpose=purpose, now=platform.now()
    )
    if fmt == "csv":
        return PlainTextResponse(reading_services.readings_csv(values), media_type="text/csv")
    return ReadingsOut(
        meter_id=meter_id,
        start=start,
        end=end,
        intervals=[IntervalOut.model_validate(v, from_attributes=True) for v in values],
    )


@router.post("/{meter_id}/read", response_model=OnDemandReadOut)
async def read_now(
    platform: PlatformDep,
    scope: Scope,
    meter_id: MeterId,
    hours: Annotated[int, Query(ge=1, le=168, description="hours of load profile to fetch")] = 24,
) -> OnDemandReadOut:
    """Read the meter now over DLMS and return what it answered (also stored through the MDM)."""
    readings = await reading_services.read_now(platform, scope, meter_id, hours=hours)
    ends = readings.interval_ends
    return OnDemandReadOut(
        meter_id=meter_id,
        read_at=readings.read_at,
        meter_clock=readings.meter_clock,
        registers=[
            RegisterOut(obis=r.obis, value=r.value, unit=r.unit, captured_at=r.captured_at) for r in readings.registers
        ],
        intervals=len(ends),
        first_interval_end=datetime.fromtimestamp(ends[0], UTC) if ends else None,
        last_interval_end=datetime.fromtimestamp(ends[-1], UTC) if ends else None,
    )
