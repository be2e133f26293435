"""Interval readings: idempotent, versioned bulk ingest and the queries the head-end, MDM and API need.

Times are integer epoch seconds, UTC (see docs/adr/0003-interval-storage.md). A row is identified by
(meter, channel, interval end); ``interval_readings`` holds exactly one current version of it and
``interval_reading_versions`` every version it replaced.

Ingest rules (``write_intervals``):

- a row identical in value, quality and source to the stored one changes nothing (a re-read, a bus
  redelivery): it counts as *unchanged*;
- a row that differs becomes the current version (version + 1); the replaced one is kept, stamped
  with the new row's ``received_at`` as ``superseded_at``: it counts as *superseded*;
- an estimate never replaces a value that is not itself an estimate (it counts as unchanged), while
  an actual or a manual value does replace an estimate;
- the same key twice in one batch is applied in order (the later one supersedes the earlier).

The repository only executes: the caller owns the transaction (``with engine.begin() as conn``) and
must roll it back if a call raises. Batches of 10,000 rows or more amortise the per-call round trips.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from openami.db import _pg_ingest
from openami.db.tables import interval_reading_versions as irv
from openami.db.tables import interval_readings as ir
from openami.db.tables import meters
from openami.domain.codes import ChannelCode, SourceCode
from openami.errors import InvalidInput, NotFound

__all__ = [
    "IngestCounts",
    "IntervalRecord",
    "IntervalRow",
    "IntervalSum",
    "count_intervals",
    "first_estimated_interval_ends",
    "intervals_for_window",
    "last_actual_interval_end",
    "last_actual_interval_ends",
    "read_intervals",
    "read_versions",
    "sum_intervals",
    "write_intervals",
]

IntervalRow = tuple[int, int, int, float, int, int, int]
"""(meter_id, channel: ChannelCode, interval_end: epoch s, value: Wh, quality: Quality flags, source: SourceCode,
received_at: epoch s)"""


class IngestCounts(NamedTuple):
    inserted: int
    superseded: int
    unchanged: int


class IntervalRecord(NamedTuple):
    """One stored version of an interval value (Wh during the interval ending at ``interval_end``)."""

    meter_id: int
    channel: int
    interval_end: int
    value: float
    quality: int
    source: int
    received_at: int
    version: int

    @property
    def unit(self) -> str:
        return ChannelCode(self.channel).unit


_SQLITE_INSERT_NEW = """
INSERT INTO interval_readings (meter_id, channel, interval_end, value, quality, source, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (meter_id, channel, interval_end) DO NOTHING
"""

_SQLITE_UPSERT = """
INSERT INTO interval_readings AS r (meter_id, channel, interval_end, value, quality, source, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (meter_id, channel, interval_end) DO UPDATE
  SET value = excluded.value, quality = excluded.quality, source = excluded.source,
      received_at = excluded.received_at, version = r.version + 1
  WHERE (r.value IS NOT excluded.value OR r.quality IS NOT excluded.quality OR r.source IS NOT excluded.source)
    AND NOT (excluded.source = 2 AND r.source <> 2)
"""  # 2 = SourceCode.ESTIMATED: an estimate never replaces an actual or manual value

_COLUMNS = (ir.c.meter_id, ir.c.channel, ir.c.interval_end, ir.c.value, ir.c.quality, ir.c.source, ir.c.received_at)


def write_intervals(conn: Connection, rows: Sequence[IntervalRow]) -> IngestCounts:
    """Store a batch of interval values idempotently; returns what became of them.

    Raises NotFound (before writing anything) when a row names a meter that does not exist, and
    InvalidInput for a row the database refuses (e.g. NaN on SQLite); the caller must then roll back.
    """
    if not rows:
        return IngestCounts(0, 0, 0)
    if not conn.in_transaction():
        conn.begin()
    raw = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        return IngestCounts(*_pg_ingest.write(cast(Any, raw), rows))
    return _write_sqlite(cast(sqlite3.Connection, raw), rows)


def _write_sqlite(raw: sqlite3.Connection, rows: Sequence[IntervalRow]) -> IngestCounts:
    """Insert the new rows first; only if some row met a stored one, upsert the batch again.

    A collection brings new intervals almost only. SQLite runs an ``ON CONFLICT DO UPDATE`` about 20 %
    slower than a ``DO NOTHING`` (the version trigger makes each row's upsert ready to fire it), so
    the common batch pays for the cheap statement alone. The second pass finds the rows the first
    inserted unchanged, and applies the others in batch order, as one upsert pass would have.
    """
    cursor = raw.cursor()
    try:
        _check_meters_sqlite(cursor, {row[0] for row in rows})
        cursor.executemany(_SQLITE_INSERT_NEW, rows)
        inserted = cursor.rowcount
        superseded = 0
        if inserted < len(rows):
            cursor.executemany(_SQLITE_UPSERT, rows)
            superseded = cursor.rowcount  # rows updated; the trigger kept each replaced version
    except sqlite3.IntegrityError as error:
        raise InvalidInput(f"interval batch refused by the database: {error}") from None
    finally:
        cursor.close()
    return IngestCounts(inserted, superseded, len(rows) - inserted - superseded)


def _check_meters_sqlite(cursor: sqlite3.Cursor, meter_ids: set[int]) -> None:
    """Raise NotFound, before anything is written, if a batch names meters that do not exist."""
    wanted = sorted(meter_ids)
    known: set[int] = set()
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        placeholders = ",".join("?" * len(chunk))  # placeholders only: the ids are bound parameters
        known.update(r[0] for r in cursor.execute(f"SELECT id FROM meters WHERE id IN ({placeholders})", chunk))  # noqa: S608
    unknown = [m for m in wanted if m not in known]
    if unknown:
        shown = ", ".join(str(m) for m in unknown[:10])
        raise NotFound(f"interval batch refers to {len(unknown)} unknown meter id(s): {shown}")


def read_intervals(
    conn: Connection,
    meter_id: int,
    start: int,
    end: int,
    channel: int | None = None,
    *,
    visible: ColumnElement[bool] | None = None,
) -> list[IntervalRecord]:
    """Current versions for one meter with ``start <= interval_end <= end``, by channel then time.

    ``visible`` is a policy clause on meters: nothing is returned for a meter it excludes.
    """
    query = sa.select(*_COLUMNS, ir.c.version).where(
        ir.c.meter_id == meter_id, ir.c.interval_end >= start, ir.c.interval_end <= end
    )
    if channel is not None:
        query = query.where(ir.c.channel == channel)
    if visible is not None:
        query = query.where(ir.c.meter_id.in_(sa.select(meters.c.id).where(visible)))
    query = query.order_by(ir.c.channel, ir.c.interval_end)
    return [IntervalRecord(*row) for row in conn.execute(query)]


class IntervalSum(NamedTuple):
    interval_end: int
    value: float  # Wh summed over the meters
    meters: int  # how many meters contributed


def sum_intervals(
    conn: Connection, meter_filter: ColumnElement[bool], channel: int, start: int, end: int, *, min_meters: int
) -> list[IntervalSum]:
    """Per interval end in ``[start, end]``, the sum of current values of the meters ``meter_filter``
    (a clause on meters) selects; intervals to which fewer than ``min_meters`` contributed are left out."""
    chosen = sa.select(meters.c.id).where(meter_filter)
    contributors = sa.func.count()
    query = (
        sa.select(ir.c.interval_end, sa.func.sum(ir.c.value), contributors)
        .where(ir.c.channel == channel, ir.c.interval_end >= start, ir.c.interval_end <= end)
        .where(ir.c.meter_id.in_(chosen))
        .group_by(ir.c.interval_end)
        .having(contributors >= min_meters)
        .order_by(ir.c.interval_end)
    )
    return [IntervalSum(int(e), float(v), int(n)) for e, v, n in conn.execute(query)]


def read_versions(conn: Connection, meter_id: int, channel: int, interval_end: int) -> list[IntervalRecord]:
    """Every version of one interval value, oldest first; the last one is current. Empty if none."""
    key = (meter_id, channel, interval_end)
    history = sa.select(
        irv.c.meter_id, irv.c.channel, irv.c.interval_end, irv.c.value, irv.c.quality, irv.c.source,
        irv.c.received_at, irv.c.version,
    ).where(irv.c.meter_id == key[0], irv.c.channel == key[1], irv.c.interval_end == key[2])  # fmt: skip
    current = sa.select(*_COLUMNS, ir.c.version).where(
        ir.c.meter_id == key[0], ir.c.channel == key[1], ir.c.interval_end == key[2]
    )
    records = [IntervalRecord(*row) for row in conn.execute(history)]
    records += [IntervalRecord(*row) for row in conn.execute(current)]
    return sorted(records, key=lambda r: r.version)


def last_actual_interval_end(conn: Connection, meter_id: int, channel: int | None = None) -> int | None:
    """The latest interval end holding a value that is not an estimate (any channel unless given), or None.

    This is where a catch-up read starts. Each channel costs one backward index probe.
    """
    latest: int | None = None
    for code in _channels(channel):
        query = (
            sa.select(ir.c.interval_end)
            .where(ir.c.meter_id == meter_id, ir.c.channel == code, ir.c.source != int(SourceCode.ESTIMATED))
            .order_by(ir.c.interval_end.desc())
            .limit(1)
        )
        found = conn.execute(query).scalar_one_or_none()
        if found is not None and (latest is None or found > latest):
            latest = int(found)
    return latest


def last_actual_interval_ends(conn: Connection, meter_ids: Sequence[int]) -> dict[int, int | None]:
    """``last_actual_interval_end`` for many meters (the scheduler plans a whole window at once).

    One statement per channel and 500 meters, each meter costing one backward index probe.
    """
    latest: dict[int, int | None] = dict.fromkeys(meter_ids)
    ordered = sorted(latest)
    for code in _channels(None):
        for i in range(0, len(ordered), 500):
            chunk = ordered[i : i + 500]
            newest = (
                sa.select(ir.c.interval_end)
                .where(ir.c.meter_id == meters.c.id, ir.c.channel == code, ir.c.source != int(SourceCode.ESTIMATED))
                .order_by(ir.c.interval_end.desc())
                .limit(1)
                .correlate(meters)
                .scalar_subquery()
            )
            for meter_id, end in conn.execute(sa.select(meters.c.id, newest).where(meters.c.id.in_(chunk))):
                current = latest[meter_id]
                if end is not None and (current is None or end > current):
                    latest[meter_id] = int(end)
    return latest


def first_estimated_interval_ends(conn: Connection, meter_ids: Sequence[int], since: int) -> dict[int, int]:
    """Per meter, the oldest interval end ``> since`` whose current value is an estimate (any channel).

    Meters without such an estimate are absent. The head-end reads again from there: the actual
    values may have become available. Served by the partial index on estimated rows.
    """
    found: dict[int, int] = {}
    ordered = sorted(set(meter_ids))
    # the literal (not a bound parameter) lets both databases match the partial index's predicate
    estimated = sa.text(f"interval_readings.source = {int(SourceCode.ESTIMATED):d}")
    for i in range(0, len(ordered), 500):
        query = (
            sa.select(ir.c.meter_id, sa.func.min(ir.c.interval_end))
            .where(ir.c.meter_id.in_(ordered[i : i + 500]), estimated, ir.c.interval_end > since)
            .group_by(ir.c.meter_id)
        )
        found.update({int(meter_id): int(end) for meter_id, end in conn.execute(query)})
    return found


def intervals_for_window(
    conn: Connection,
    start: int,
    end: int,
    *,
    meter_ids: Sequence[int] | None = None,
    channel: int | None = None,
    batch_size: int = 10_000,
) -> Iterator[IntervalRecord]:
    """Current versions with ``start <= interval_end <= end``, streamed by meter, channel and time.

    For aggregation and exports; the optional ``meter_ids`` restrict the meters (any number).
    """
    if meter_ids is not None and not meter_ids:
        return
    chunks: list[Sequence[int] | None] = [None]
    if meter_ids is not None:
        ordered = sorted(set(meter_ids))
        chunks = [ordered[i : i + 500] for i in range(0, len(ordered), 500)]
    for chunk in chunks:
        query = sa.select(*_COLUMNS, ir.c.version).where(
            ir.c.channel.in_(_channels(channel)), ir.c.interval_end >= start, ir.c.interval_end <= end
        )
        if chunk is not None:
            query = query.where(ir.c.meter_id.in_(chunk))
        query = query.order_by(ir.c.meter_id, ir.c.channel, ir.c.interval_end)
        result = conn.execution_options(yield_per=batch_size).execute(query)
        for row in result:
            yield IntervalRecord(*row)


def count_intervals(
    conn: Connection, start: int, end: int, *, meter_ids: Sequence[int] | None = None
) -> dict[int, int]:
    """Stored current values per meter with ``start <= interval_end <= end`` (all channels).

    Give ``meter_ids`` on a large table: without them the whole table is scanned.
    """
    query = (
        sa.select(ir.c.meter_id, sa.func.count())
        .where(ir.c.channel.in_(_channels(None)), ir.c.interval_end >= start, ir.c.interval_end <= end)
        .group_by(ir.c.meter_id)
    )
    if meter_ids is not None:
        query = query.where(ir.c.meter_id.in_(list(meter_ids)))
    return {int(meter_id): int(count) for meter_id, count in conn.execute(query)}


def _channels(channel: int | None) -> list[int]:
    """The channel codes a query covers: constraining the key's second column keeps index scans tight."""
    return [channel] if channel is not None else [int(c) for c in ChannelCode]
