"""Register snapshots (e.g. the midnight active-import register), keyed by meter, OBIS code and capture time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db._upsert import insert_on_conflict
from openami.db.tables import register_snapshots as rs

__all__ = ["RegisterRecord", "RegisterRow", "read_registers", "write_registers"]

RegisterRow = tuple[int, str, int, float, str, int] | tuple[int, str, int, float, str, int, int]
"""(meter_id, obis "1.0.1.8.0.255", captured_at: epoch s, value, unit, received_at: epoch s[, quality flags])"""


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


def write_registers(conn: Connection, rows: Sequence[RegisterRow]) -> int:
    """Store snapshots; one already stored for (meter, obis, captured_at) is kept as it was (a re-read).

    Returns the number of new snapshots. On PostgreSQL the batch is one statement over arrays
    (``unnest``): one round trip however many rows, where a multi-row insert with RETURNING cost
    as much as all the interval values of the same reads.
    """
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        columns = list(zip(*((*r[:6], r[6] if len(r) > 6 else 0) for r in rows), strict=True))
        names = ("meter_id", "obis", "captured_at", "value", "unit", "received_at", "quality")
        result = conn.execute(_PG_INSERT, {name: list(col) for name, col in zip(names, columns, strict=True)})
        return int(result.rowcount)
    values = [
        {
            "meter_id": r[0],
            "obis": r[1],
            "captured_at": r[2],
            "value": r[3],
            "unit": r[4],
            "received_at": r[5],
            "quality": r[6] if len(r) > 6 else 0,
        }
        for r in rows
    ]
    return insert_on_conflict(conn, rs, values, key=("meter_id", "obis", "captured_at"))


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
