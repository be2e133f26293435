"""Aggregated readings: what network operators may see without consent (seed 002: aggregates above a
minimum group size, at the level they need, e.g. a distribution transformer's load)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import meters as meter_repo
from openami.db import readings as readings_repo
from openami.domain.codes import ChannelCode
from openami.security.policy import Resource, authorize, visible_meters
from openami.services.context import RequestScope
from openami.services.readings import epoch_range

ACTION = "readings.read-aggregate"


@dataclass(frozen=True, slots=True)
class LoadInterval:
    interval_end: datetime
    import_wh: float  # active energy imported during the interval, summed over the meters
    meters: int  # how many meters contributed to this interval


@dataclass(frozen=True, slots=True)
class TransformerLoad:
    transformer_id: str
    meters: int  # meters on the transformer that the caller's scope reaches
    min_group: int
    intervals: list[LoadInterval]


def transformer_load(
    engine: Engine,
    scope: RequestScope,
    transformer_id: str,
    start: datetime,
    end: datetime,
    *,
    min_group: int,
    now: datetime | None = None,
) -> TransformerLoad:
    """Summed import per interval of the meters on a transformer.

    Refused (PermissionDenied, audited) when the group the scope reaches has fewer than
    ``min_group`` meters; an interval to which fewer than ``min_group`` meters contributed is left
    out, so that no single premises can be singled out. NotFound for an unknown transformer.
    """
    first, last = epoch_range(start, end)
    moment = now or datetime.now(UTC)
    with engine.connect() as conn:
        area = meter_repo.transformer_area(conn, transformer_id)
        group = sa.and_(visible_meters(scope, ACTION), meter_repo.on_transformer(transformer_id))
        size = meter_repo.count_meters(conn, visible=group)
        resource = Resource("transformer", transformer_id, area=area, group_size=size, min_group_size=min_group)
        authorize(conn, scope, ACTION, resource, now=moment)
        sums = readings_repo.sum_intervals(
            conn, group, int(ChannelCode.ACTIVE_IMPORT), first, last, min_meters=min_group
        )  # fmt: skip
    intervals = [LoadInterval(datetime.fromtimestamp(s.interval_end, UTC), s.value, s.meters) for s in sums]
    return TransformerLoad(transformer_id, size, min_group, intervals)
