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
from openami.security import audit
from openami.security.policy import authorize, visible_meters
from openami.services.context import Platform, RequestScope

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


def epoch_range(start: datetime, end: datetime) -> tuple[int, int]:
    if start.utcoffset() is None or end.utcoffset() is None:
        raise InvalidInput("from and to must carry a time zone (e.g. 2026-11-01T00:00:00Z)")
    if end < start:
        raise InvalidInput("'to' is before 'from'")
    if (end - start).days > MAX_RANGE_DAYS:
        raise InvalidInput(f"a range may span at most {MAX_RANGE_DAYS} days")
    return int(start.timestamp()), int(end.timestamp())


def meter_readings(  # noqa: PLR0913 - the query's filters, then who asks, why and when
    engine: Engine,
    scope: RequestScope,
    meter_id: int,
    start: datetime,
    end: datetime,
    channel: ChannelCode | None = None,
    *,
    purpose: str | None = None,
    now: datetime | None = None,
) -> list[IntervalValue]:
    """Current versions of a meter's interval values with ``start <= interval end <= end``.

    Personal data: the read is audited with whose data it is and the declared purpose. A meter
    outside the scope is NotFound, as an unknown one (its existence is not revealed).
    """
    first, last = epoch_range(start, end)
    moment = now or datetime.now(UTC)
    with engine.connect() as conn:
        authorize(conn, scope, "readings.read", purpose=purpose, now=moment)
        visible = visible_meters(scope, "readings.read", purpose)
        meter_repo.get_meter(conn, meter_id, visible=visible)
        code = None if channel is None else int(channel)
        records = readings_repo.read_intervals(conn, meter_id, first, last, code, visible=visible)
        premise = meter_repo.premise_of(conn, meter_id)
        entry = audit.AuditEntry(
            scope.principal, "readings.read", "ok", resource=f"meter:{meter_id}",
            subject=None if premise is None else f"premise:{premise}", purpose=purpose,
            details={"from": first, "to": last, "values": len(records)},
        )  # fmt: skip
        audit.record(conn, entry, now=moment)
        conn.commit()
    return [_interval_value(r) for r in records]


def _interval_value(r: readings_repo.IntervalRecord) -> IntervalValue:
    return IntervalValue(
        channel=ChannelCode(r.channel).obis,
        interval_end=datetime.fromtimestamp(r.interval_end, UTC),
        value=r.value,
        unit=r.unit,
        quality=quality_names(r.quality),
        source=SourceCode(r.source).source.value,
        version=r.version,
        received_at=datetime.fromtimestamp(r.received_at, UTC),
    )


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
    """On-demand read of one meter (a command on the meter: an action of its own)."""
    if not 1 <= hours <= 24 * 7:
        raise InvalidInput("hours must be between 1 and 168")
    with platform.engine.connect() as conn:
        authorize(conn, scope, "meter.read-now", now=platform.now())
        meter_repo.get_meter(conn, meter_id, visible=visible_meters(scope, "meter.read-now"))
    return await platform.collector.read_on_demand(meter_id, hours=hours)


def collection_runs(
    engine: Engine, scope: RequestScope, *, limit: int = 50, now: datetime | None = None
) -> list[CollectionRun]:
    with engine.connect() as conn:
        authorize(conn, scope, "collection.read", now=now or datetime.now(UTC))
        return runs_repo.list_runs(conn, limit=limit)


def communication_errors(
    engine: Engine, scope: RequestScope, *, meter_id: int | None = None, limit: int = 100, now: datetime | None = None
) -> list[CommErrorRecord]:
    with engine.connect() as conn:
        authorize(conn, scope, "comm-errors.read", now=now or datetime.now(UTC))
        return errors_repo.list_comm_errors(conn, meter_id=meter_id, limit=limit)
