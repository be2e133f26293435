"""Register snapshots (e.g. the midnight active-import register), keyed by meter, OBIS code and capture time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import _pg_ingest
from openami.db._upsert import insert_on_conflict
from openami.db.tables import meters
from openami.db.tables import register_snapshots as rs
from openami.errors import NotFound

__all__ = ["RegisterRecord", "RegisterRow", "read_registers", "write_registers"]

RegisterRow = tuple[int, str, int, float, str, int] | tuple[int, str, int, float, str, int, int]
"""(meter_id, obis "1.0.1.8.0.255", captured_at: epoch s, value, unit, received_at: epoch s[, quality flags])"""

_FullRow = tuple[int, str, int, float, str, int, int]


class RegisterRecord(NamedTuple):
    meter_id: int
    obis: str
    captured_at: int
    value: float
    unit: str
    quality: int
    received_at: int


_PG_INSERT = sa.text("""
INSERT INTO register_snapshots (meter_id, obis, captured_at, value, unit, received_at, quality)
SELECT * FROM unnest(CAST(:meter_id AS bigint[]), CAST(:obis AS text[]), CAST(:captured_at AS bigint[]),
                     CAST(:value AS float8[]), CAST(:unit AS text[]), CAST(:received_at AS bigint[]),
                     CAST(:quality AS integer[]))
ON CONFLICT (meter_id, obis, captured_at) DO NOTHING
""")

_PG_CLASSIFY = sa.text("""
SELECT p.meter_id, p.obis,
       EXISTS (SELECT 1 FROM meters m WHERE m.id = p.meter_id) AS known
FROM unnest(CAST(:meter_id AS bigint[]), CAST(:obis AS text[]), CAST(:lo AS bigint[])) AS p(meter_id, obis, lo)
WHERE NOT EXISTS (SELECT 1 FROM meters m WHERE m.id = p.meter_id)
   OR EXISTS (SELECT 1 FROM register_snapshots r
              WHERE r.meter_id = p.meter_id AND r.obis = p.obis AND r.captured_at >= p.lo)
""")

_COLUMNS = ("meter_id", "obis", "captured_at", "value", "unit", "received_at", "quality")
_COPY_TYPES = ["int4", "text", "int8", "float8", "text", "int8", "int4"]


def write_registers(conn: Connection, rows: Sequence[RegisterRow]) -> int:
    """Store snapshots; one already stored for (meter, obis, captured_at) is kept as it was (a re-read).

    Returns the number of new snapshots. Raises NotFound, before writing anything, when a row names
    a meter that does not exist (there is no foreign key: see ADR 0003). On PostgreSQL snapshots of
    (meter, obis) pairs with nothing stored at or after the batch's first capture for them -- a
    collection's new midnight snapshots -- are binary-COPYed; the others (re-reads) go through one
    ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING``.
    """
    if not rows:
        return 0
    full = [(*r[:6], r[6] if len(r) > 6 else 0) for r in rows]
    if not conn.in_transaction():
        conn.begin()
    if conn.dialect.name == "postgresql":
        return _write_pg(conn, full)
    _check_meters(conn, {r[0] for r in full})
    values = [dict(zip(_COLUMNS, r, strict=True)) for r in full]
    return insert_on_conflict(conn, rs, values, key=("meter_id", "obis", "captured_at"))


def _write_pg(conn: Connection, rows: list[_FullRow]) -> int:
    first: dict[tuple[int, str], int] = {}
    for r in rows:
        key = (r[0], r[1])
        seen = first.get(key)
        if seen is None or r[2] < seen:
            first[key] = r[2]
    hot = _classify_pg(conn, first)
    cold = [r for r in rows if (r[0], r[1]) not in hot] if hot else rows
    warm = [r for r in rows if (r[0], r[1]) in hot] if hot else []
    if cold and not _copy_direct(conn, cold):
        cold, warm = [], rows
    return len(cold) + (_insert_pg(conn, warm) if warm else 0)


def _classify_pg(conn: Connection, first: dict[tuple[int, str], int]) -> set[tuple[int, str]]:
    """(meter, obis) pairs with a snapshot at or after the batch's first for them; NotFound for unknown meters."""
    params = {"meter_id": [k[0] for k in first], "obis": [k[1] for k in first], "lo": list(first.values())}
    hot: set[tuple[int, str]] = set()
    unknown: set[int] = set()
    for meter_id, obis, known in conn.execute(_PG_CLASSIFY, params):
        if known:
            hot.add((meter_id, obis))
        else:
            unknown.add(meter_id)
    if unknown:
        _raise_unknown(unknown)
    return hot


def _copy_direct(conn: Connection, rows: list[_FullRow]) -> bool:
    raw = cast(Any, conn.connection.driver_connection)
    with raw.cursor() as cur:
        return _pg_ingest.copy_new(cur, "register_snapshots", ", ".join(_COLUMNS), _COPY_TYPES, rows)


def _insert_pg(conn: Connection, rows: list[_FullRow]) -> int:
    columns = list(zip(*rows, strict=True))
    result = conn.execute(_PG_INSERT, {name: list(col) for name, col in zip(_COLUMNS, columns, strict=True)})
    return int(result.rowcount)


def _check_meters(conn: Connection, meter_ids: set[int]) -> None:
    wanted = sorted(meter_ids)
    known: set[int] = set()
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        known.update(conn.execute(sa.select(meters.c.id).where(meters.c.id.in_(chunk))).scalars())
    if unknown := set(wanted) - known:
        _raise_unknown(unknown)


def _raise_unknown(unknown: set[int]) -> None:
    shown = ", ".join(str(m) for m in sorted(unknown)[:10])
    raise NotFound(f"register snapshots refer to {len(unknown)} unknown meter id(s): {shown}")


def read_registers(
    conn: Connection, meter_id: int, start: int, end: int, obis: str | None = None
) -> list[RegisterRecord]:
    """Snapshots of one meter with ``start <= captured_at <= end``, by OBIS code then time."""
    query = sa.select(
        rs.c.meter_id, rs.c.obis, rs.c.captured_at, rs.c.value, rs.c.unit, rs.c.quality, rs.c.received_at
    ).where(rs.c.meter_id == meter_id, rs.c.captured_at >= start, rs.c.captured_at <= end)
    if obis is not None:
        query = query.where(rs.c.obis == obis)
    return [RegisterRecord(*row) for row in conn.execute(query.order_by(rs.c.obis, rs.c.captured_at))]
