"""PostgreSQL bulk path of ``readings.write_intervals``: COPY straight into the table when it can, upsert otherwise.

Almost every value a collection brings is newer than anything stored for its (meter, channel): one
query finds the pairs that already have a row at or after the batch's first interval for them
("hot" pairs) and checks that every meter exists. Rows of the other pairs cannot conflict and are
COPYed (binary) directly into ``interval_readings`` -- PostgreSQL's fastest path, several times
faster than ``INSERT … ON CONFLICT``. Rows of hot pairs (re-reads, actuals replacing estimates,
edits) are COPYed into a temporary staging table and merged with one ``INSERT … SELECT … ON CONFLICT
DO UPDATE … WHERE … IS DISTINCT FROM``; the trigger ``interval_readings_keep_version`` keeps the
replaced version. Should the direct COPY still meet a duplicate (a concurrent writer, or the same
key twice in one batch) it is rolled back to a savepoint and the whole batch takes the merge path;
keys repeated within a batch are merged in rounds, first occurrence first, like SQLite's executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from openami.domain.codes import SourceCode
from openami.errors import NotFound

Row = tuple[int, int, int, float, int, int, int]

_COLUMNS = "meter_id, channel, interval_end, value, quality, source, received_at"
_TYPES = ["int4", "int2", "int8", "float8", "int4", "int2", "int8"]
_STAGE = "openami_interval_stage"

_CLASSIFY = """
SELECT p.meter_id, p.channel,
       EXISTS (SELECT 1 FROM meters m WHERE m.id = p.meter_id) AS known,
       EXISTS (SELECT 1 FROM interval_readings r
               WHERE r.meter_id = p.meter_id AND r.channel = p.channel AND r.interval_end >= p.lo) AS hot
FROM unnest(%s::int4[], %s::int2[], %s::int8[]) AS p(meter_id, channel, lo)
WHERE NOT EXISTS (SELECT 1 FROM meters m WHERE m.id = p.meter_id)
   OR EXISTS (SELECT 1 FROM interval_readings r
              WHERE r.meter_id = p.meter_id AND r.channel = p.channel AND r.interval_end >= p.lo)
"""

_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
  meter_id int4, channel int2, interval_end int8, value float8, quality int4, source int2, received_at int8
) ON COMMIT DELETE ROWS
"""

_MERGE = """
WITH up AS (
  INSERT INTO interval_readings AS r (meter_id, channel, interval_end, value, quality, source, received_at)
  SELECT meter_id, channel, interval_end, value, quality, source, received_at FROM openami_interval_stage
  ON CONFLICT (meter_id, channel, interval_end) DO UPDATE
    SET value = excluded.value, quality = excluded.quality, source = excluded.source,
        received_at = excluded.received_at, version = r.version + 1
    WHERE (r.value, r.quality, r.source) IS DISTINCT FROM (excluded.value, excluded.quality, excluded.source)
      AND NOT (excluded.source = %(estimated)s AND r.source <> %(estimated)s)
  RETURNING (r.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
"""


def write(raw: psycopg.Connection[Any], rows: Sequence[Row]) -> tuple[int, int, int]:
    """(inserted, superseded, unchanged) for ``rows``, inside the caller's open transaction."""
    first: dict[tuple[int, int], int] = {}
    get = first.get
    for row in rows:
        key = (row[0], row[1])
        end = row[2]
        seen = get(key)
        if seen is None or end < seen:
            first[key] = end
    with raw.cursor() as cur:
        hot = _classify(cur, first)
        if hot:
            cold: Sequence[Row] = [r for r in rows if (r[0], r[1]) not in hot]
            warm: Sequence[Row] = [r for r in rows if (r[0], r[1]) in hot]
        else:
            cold, warm = rows, ()
        if cold and not copy_new(cur, "interval_readings", _COLUMNS, _TYPES, cold):
            cold, warm = (), rows
        inserted, superseded = _merge(cur, warm) if warm else (0, 0)
    return len(cold) + inserted, superseded, len(warm) - inserted - superseded


def _classify(cur: psycopg.Cursor[Any], first: dict[tuple[int, int], int]) -> set[tuple[int, int]]:
    meters = [k[0] for k in first]
    channels = [k[1] for k in first]
    cur.execute(_CLASSIFY, (meters, channels, list(first.values())))
    hot: set[tuple[int, int]] = set()
    unknown: set[int] = set()
    for meter_id, channel, known, is_hot in cur.fetchall():
        if not known:
            unknown.add(meter_id)
        elif is_hot:
            hot.add((meter_id, channel))
    if unknown:
        shown = ", ".join(str(m) for m in sorted(unknown)[:10])
        raise NotFound(f"interval batch refers to {len(unknown)} unknown meter id(s): {shown}")
    return hot


def copy_binary(cur: psycopg.Cursor[Any], table: str, columns: str, types: Sequence[str], rows: Sequence[Any]) -> None:
    """Binary COPY of ``rows`` into ``table`` (``columns`` and ``types`` are this package's constants)."""
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(types))
        write_row = copy.write_row
        for row in rows:
            write_row(row)


def copy_new(cur: psycopg.Cursor[Any], table: str, columns: str, types: Sequence[str], rows: Sequence[Any]) -> bool:
    """``copy_binary`` under a savepoint: False, and nothing written, when a row's key already exists."""
    cur.execute("SAVEPOINT openami_copy_new")
    try:
        copy_binary(cur, table, columns, types, rows)
    except pg_errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT openami_copy_new")
        cur.execute("RELEASE SAVEPOINT openami_copy_new")
        return False
    cur.execute("RELEASE SAVEPOINT openami_copy_new")
    return True


def _merge(cur: psycopg.Cursor[Any], rows: Sequence[Row]) -> tuple[int, int]:
    cur.execute(_CREATE_STAGE)
    cur.execute("SAVEPOINT openami_ingest_merge")
    try:
        result = _merge_once(cur, rows)
    except pg_errors.CardinalityViolation:  # the same key more than once in the batch
        cur.execute("ROLLBACK TO SAVEPOINT openami_ingest_merge")
        inserted = superseded = 0
        for round_rows in _rounds(rows):
            ins, sup = _merge_once(cur, round_rows)
            inserted += ins
            superseded += sup
        result = (inserted, superseded)
    cur.execute("RELEASE SAVEPOINT openami_ingest_merge")
    return result


def _merge_once(cur: psycopg.Cursor[Any], rows: Sequence[Row]) -> tuple[int, int]:
    cur.execute(f"TRUNCATE {_STAGE}")
    copy_binary(cur, _STAGE, _COLUMNS, _TYPES, rows)
    cur.execute(_MERGE, {"estimated": int(SourceCode.ESTIMATED)})
    counts = cur.fetchone()
    assert counts is not None
    return int(counts[0]), int(counts[1])


def _rounds(rows: Sequence[Row]) -> list[list[Row]]:
    """Split rows so that no round holds a key twice; a key's n-th occurrence goes to round n."""
    seen: dict[tuple[int, int, int], int] = {}
    rounds: list[list[Row]] = []
    for row in rows:
        key = (row[0], row[1], row[2])
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(row)
    return rounds
