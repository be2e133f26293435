"""Reading services: stored interval values with their provenance, on-demand reads, collection status."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from openami.db import collection as runs_repo
from openami.db import comm_errors as errors_repo
from openami.db import meters as meter_repo
from openami.db import readings as readings_repo
from openami.db.collection import CollectionRun
from openami.db.comm_errors import CommErrorRecord
from openami.domain.codes import ChannelCode, SourceCode
from openami.domain.messages import CollectedReadings
from openami.domain.readings import Quality
from openami.errors import InvalidInput
from openami.services.context import Platform, RequestScope

SCOPE_READINGS = "readings:read"
SCOPE_READ_NOW = "meters:read-now"
SCOPE_COLLECTION = "collection:read"
MAX_RANGE_DAYS = 366


@dataclass(frozen=True, slots=True)
class IntervalValue:
    """One stored interval value as the API shows it."""

    channel: str
    interval_end: datetime
    value: float
    unit: str
    quality: list[str]
    source: str
    version: int
    received_at: datetime


def quality_names(flags: int) -> list[str]:
    return [flag.name.lower() for flag in Quality if flag and flags & flag and flag.name] or ["valid"]


def _epoch_range(start: datetime, end: datetime) -> tuple[int, int]:
    if start.utcoffset() is None or end.utcoffset() is None:
        raise InvalidInput("from and to must carry a time zone (e.g. 2026-11-01T00:00:00Z)")
    if end < start:
        raise InvalidInput("'to' is before 'from'")
    if (end - start).days > MAX_RANGE_DAYS:
        raise InvalidInput(f"a range may span at most {MAX_RANGE_DAYS} days")
    return int(start.timestamp()), int(end.timestamp())


def meter_readings(
    engine: Engine,
    scope: RequestScope,
    meter_id: int,
    start: datetime,
    end: datetime,
    channel: ChannelCode | None = None,
) -> list[IntervalValue]:
    """Current versions of a meter's interval values with ``start <= interval end <= end``."""
    scope.require(SCOPE_READINGS)
    first, last = _epoch_range(start, end)
    with engine.connect() as conn:
        meter_repo.get_meter(conn, meter_id)  # NotFound for an unknown meter
        records = readings_repo.read_intervals(conn, meter_id, first, last, None if channel is None else int(channel))
    return [
        IntervalValue(
            channel=ChannelCode(r.channel).obis,
            interval_end=datetime.fromtimestamp(r.interval_end, UTC),
            value=r.value,
            unit=r.unit,
            quality=quality_names(r.quality),
            source=SourceCode(r.source).source.value,
            version=r.version,
            received_at=datetime.fromtimestamp(r.received_at, UTC),
        )
        for r in records
    ]


def readings_csv(values: Sequence[IntervalValue]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["channel", "interval_end", "value", "unit", "quality", "source", "version", "received_at"])
    for v in values:
        writer.writerow(
            [
                v.channel,
                v.interval_end.isoformat(),
                repr(v.value),
                v.unit,
                "|".join(v.quality),
                v.source,
                v.version,
                v.received_at.isoformat(),
            ]
        )
    return out.getvalue()


async def read_now(platform: Platform, scope: RequestScope, meter_id: int, *, hours: int = 24) -> CollectedReadings:
    """On-demand read of one meter (a command on the meter: needs its own scope)."""
    scope.require(SCOPE_READ_NOW)
    if not 1 <= hours <= 24 * 7:
        raise InvalidInput("hours must be between 1 and 168")
    with platform.engine.connect() as conn:
        meter_repo.get_meter(conn, meter_id)
    return await platform.collector.read_on_demand(meter_id, hours=hours)


def collection_runs(engine: Engine, scope: RequestScope, *, limit: int = 50) -> list[CollectionRun]:
    scope.require(SCOPE_COLLECTION)
    with engine.connect() as conn:
        return runs_repo.list_runs(conn, limit=limit)


def communication_errors(
    engine: Engine, scope: RequestScope, *, meter_id: int | None = None, limit: int = 100
) -> list[CommErrorRecord]:
    scope.require(SCOPE_COLLECTION)
    with engine.connect() as conn:
        return errors_repo.list_comm_errors(conn, meter_id=meter_id, limit=limit)
