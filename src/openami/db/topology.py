"""The grid topology as a whole: replace it in one transaction, and load it for the outage engine.

``replace_topology`` makes the database hold exactly the given substations, feeders, transformers and
service points (and meter assignments). Foreign keys point from service points to transformers, from
meters to service points and from account roles to substations, and SQLite checks them at once
(not at commit), so the order matters: add or update the new rows parents first, move meters, then
delete what the new grid no longer has, children first. Premises are only added or updated, never
deleted: customer accounts and other records refer to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import tables as t
from openami.db._upsert import insert_on_conflict
from openami.domain.meters import Feeder, Premise, ServicePoint, Substation
from openami.domain.meters import Transformer as GridTransformer

__all__ = [
    "GridSnapshot",
    "MeterPlace",
    "TopologyCounts",
    "account_areas",
    "existing_premises",
    "load_grid",
    "premise_addresses",
    "replace_topology",
    "topology_counts",
]

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class TopologyCounts:
    substations: int
    feeders: int
    transformers: int
    service_points: int
    meters: int  # meters assigned to a service point


@dataclass(frozen=True, slots=True)
class MeterPlace:
    """Where one meter hangs in the grid, for the outage engine (one row per assigned meter)."""

    meter_id: int
    service_point_id: str
    premise_id: str
    critical_care: bool
    transformer_id: str
    feeder_id: str
    substation_id: str


@dataclass(frozen=True, slots=True)
class GridSnapshot:
    """Every assigned meter's place, and the devices (also those without meters)."""

    meters: tuple[MeterPlace, ...]
    transformers: dict[str, str]  # transformer -> feeder
    feeders: dict[str, str]  # feeder -> substation


def account_areas(conn: Connection) -> dict[str, int]:
    """Substations that are some account role's area -> how many roles name it."""
    query = (
        sa.select(t.account_roles.c.area, sa.func.count())
        .where(t.account_roles.c.area.is_not(None))
        .group_by(t.account_roles.c.area)
    )
    return {str(area): int(n) for area, n in conn.execute(query)}


def existing_premises(conn: Connection, premise_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(premise_ids), _CHUNK):
        chunk = premise_ids[i : i + _CHUNK]
        found.update(
            str(p) for p in conn.execute(sa.select(t.premises.c.id).where(t.premises.c.id.in_(chunk))).scalars()
        )
    return found


def premise_addresses(conn: Connection, premise_ids: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for i in range(0, len(premise_ids), _CHUNK):
        query = sa.select(t.premises.c.id, t.premises.c.address).where(t.premises.c.id.in_(premise_ids[i : i + _CHUNK]))
        found.update({str(k): str(v) for k, v in conn.execute(query)})
    return found


def _upsert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    update = [c for c in rows[0] if c != "id"] if rows else []
    for i in range(0, len(rows), _CHUNK):
        insert_on_conflict(conn, table, rows[i : i + _CHUNK], key=("id",), update=update)


def _delete_missing(conn: Connection, table: sa.Table, keep: Iterable[str]) -> None:
    """Delete the rows of ``table`` whose id is not in ``keep`` (compared in Python: ids are few per table)."""
    wanted = set(keep)
    stale = [i for i in conn.execute(sa.select(table.c.id)).scalars() if i not in wanted]
    for i in range(0, len(stale), _CHUNK):
        conn.execute(sa.delete(table).where(table.c.id.in_(stale[i : i + _CHUNK])))


def replace_topology(
    conn: Connection,
    *,
    substations: Sequence[Substation],
    feeders: Sequence[Feeder],
    transformers: Sequence[GridTransformer],
    premises: Sequence[Premise],
    service_points: Sequence[ServicePoint],
    assignments: dict[str, int],
) -> None:
    """Make the grid exactly this (the caller validated it); ``assignments`` is service point -> meter id.

    Meters not in ``assignments`` end up on no service point. Runs in the caller's transaction.
    """
    _upsert(conn, t.substations, [{"id": s.id, "name": s.name} for s in substations])
    _upsert(conn, t.feeders, [{"id": f.id, "substation_id": f.substation_id} for f in feeders])
    _upsert(conn, t.transformers, [{"id": x.id, "feeder_id": x.feeder_id, "phase": str(x.phase)} for x in transformers])
    _upsert(conn, t.premises, [{"id": p.id, "address": p.address, "critical_care": p.critical_care} for p in premises])
    _upsert(
        conn,
        t.service_points,
        [
            {"id": sp.id, "premise_id": sp.premise_id, "transformer_id": sp.transformer_id, "phase": str(sp.phase)}
            for sp in service_points
        ],
    )
    conn.execute(sa.update(t.meters).where(t.meters.c.service_point_id.is_not(None)).values(service_point_id=None))
    if assignments:
        move = sa.update(t.meters).where(t.meters.c.id == sa.bindparam("m")).values(service_point_id=sa.bindparam("sp"))
        conn.execute(move, [{"m": meter_id, "sp": sp} for sp, meter_id in assignments.items()])
    _delete_missing(conn, t.service_points, (sp.id for sp in service_points))
    _delete_missing(conn, t.transformers, (x.id for x in transformers))
    _delete_missing(conn, t.feeders, (f.id for f in feeders))
    _delete_missing(conn, t.substations, (s.id for s in substations))


def topology_counts(conn: Connection) -> TopologyCounts:
    def count(table: sa.Table, where: Any = None) -> int:
        query = sa.select(sa.func.count()).select_from(table)
        return int(conn.execute(query if where is None else query.where(where)).scalar_one())

    return TopologyCounts(
        substations=count(t.substations),
        feeders=count(t.feeders),
        transformers=count(t.transformers),
        service_points=count(t.service_points),
        meters=count(t.meters, t.meters.c.service_point_id.is_not(None)),
    )


def load_grid(conn: Connection) -> GridSnapshot:
    """The whole grid in one query per level: what the outage engine keeps in memory."""
    m, sp, pr, tr, fd = t.meters, t.service_points, t.premises, t.transformers, t.feeders
    query = (
        sa.select(m.c.id, sp.c.id, sp.c.premise_id, pr.c.critical_care, tr.c.id, fd.c.id, fd.c.substation_id)
        .join(sp, sp.c.id == m.c.service_point_id)
        .join(pr, pr.c.id == sp.c.premise_id)
        .join(tr, tr.c.id == sp.c.transformer_id)
        .join(fd, fd.c.id == tr.c.feeder_id)
        .order_by(m.c.id)
    )
    places = tuple(
        MeterPlace(int(row[0]), str(row[1]), str(row[2]), bool(row[3]), str(row[4]), str(row[5]), str(row[6]))
        for row in conn.execute(query)
    )
    transformers = {str(i): str(f) for i, f in conn.execute(sa.select(tr.c.id, tr.c.feeder_id))}
    feeders = {str(i): str(s) for i, s in conn.execute(sa.select(fd.c.id, fd.c.substation_id))}
    return GridSnapshot(places, transformers, feeders)
