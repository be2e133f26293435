"""Meter events: bulk storage de-duplicated on (meter, code, meter time), refusals with a reason, queries.

``store_events`` is the one way events enter the database. It never raises for bad events: an
event of an unknown meter, with a code openami does not know, or with a time stamp that cannot be
true (too far in the future, before the year 2000 or before the meter was commissioned) is kept in
``meter_events_rejected`` with its reason, and the caller is told which (the head-end raises a
security event for unknown meters). Known events go in with multi-row INSERTs, de-duplicated in the
statement (PostgreSQL: ``ON CONFLICT DO NOTHING … RETURNING``) or by a look-up under the write lock
(SQLite), and only the rows the database really inserted come back as new, so a push, its
retransmission and the same event read from the meter's log are published once however they race.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from openami.db import tables as t
from openami.db.engine import insert_many, placeholder
from openami.domain.meter_events import EventCategory, EventCode, category_of

__all__ = [
    "EARLIEST_EVENT_TIME",
    "SOURCES",
    "EventRecord",
    "EventRow",
    "Rejected",
    "StoreOutcome",
    "advance_push_counters",
    "commissioning_times",
    "count_rejected",
    "list_events",
    "list_rejected",
    "load_push_counters",
    "newest_log_times",
    "store_events",
]

SOURCES = ("push", "log")
EARLIEST_EVENT_TIME = 946_684_800  # 2000-01-01T00:00:00Z: no meter of this fleet recorded anything before
_CHUNK = 5000  # meter ids per IN (...) list


class EventRow(NamedTuple):
    """One event as the head-end hands it to storage (times in epoch seconds, UTC)."""

    meter_id: int
    code: int
    meter_time: int
    received_at: float
    source: str  # "push" | "log"
    value: float | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        return self.meter_id, self.code, self.meter_time


class Rejected(NamedTuple):
    row: EventRow
    reason: str  # "unknown-meter", "unknown-code", "future", "too-old", "bad-source"


@dataclass(slots=True)
class StoreOutcome:
    """What one ``store_events`` call did: ``stored`` are the new rows only, in the order given."""

    stored: list[EventRow] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)


class EventRecord(NamedTuple):
    id: int
    meter_id: int
    code: int
    category: str
    meter_time: int
    received_at: float
    source: str
    value: float | None


_KNOWN_CODES = frozenset(int(c) for c in EventCode)


def store_events(
    conn: Connection,
    rows: Iterable[EventRow],
    *,
    now: float,
    future_tolerance_s: float = 3600.0,
    commissioning_slack_s: float = 86_400.0,
    commissioned: Mapping[int, float] | None = None,
) -> StoreOutcome:
    """Store new events, skip duplicates, record refusals; one statement per kind, in the caller's transaction.

    ``now`` is the head-end's time (epoch s). An event more than ``future_tolerance_s`` ahead of it,
    before 2000, or more than ``commissioning_slack_s`` before its meter's commissioning is refused
    (a meter's clock may run a little before its paperwork: the slack). ``commissioned``: the
    meters' ``commissioning_times`` when the caller read them already (a batch stored in parts).
    """
    outcome = StoreOutcome()
    unique: dict[tuple[int, int, int], EventRow] = {}
    for row in rows:
        if row.key in unique:
            outcome.duplicates += 1
        else:
            unique[row.key] = row
    if not unique:
        return outcome
    if commissioned is None:
        commissioned = commissioning_times(conn, {row.meter_id for row in unique.values()})
    accepted: list[EventRow] = []
    for row in unique.values():
        reason = _refusal(row, commissioned, now, future_tolerance_s, commissioning_slack_s)
        if reason is None:
            accepted.append(row)
        else:
            outcome.rejected.append(Rejected(row, reason))
    inserted = _insert_new(conn, accepted)
    outcome.stored = [row for row in accepted if row.key in inserted]
    outcome.duplicates += len(accepted) - len(outcome.stored)
    _insert_rejected(conn, outcome.rejected)
    return outcome


def _refusal(
    row: EventRow, commissioned: Mapping[int, float], now: float, future_tolerance_s: float, slack_s: float
) -> str | None:
    if row.source not in SOURCES:
        return "bad-source"
    if row.meter_id not in commissioned:
        return "unknown-meter"
    if row.code not in _KNOWN_CODES:
        return "unknown-code"
    if row.meter_time > now + future_tolerance_s:
        return "future"
    if row.meter_time < max(EARLIEST_EVENT_TIME, commissioned[row.meter_id] - slack_s):
        return "too-old"
    return None


def commissioning_times(conn: Connection, meter_ids: set[int]) -> dict[int, float]:
    """Commissioning time (epoch s) of those ``meter_ids`` that exist."""
    found: dict[int, float] = {}
    ids = sorted(meter_ids)
    m = t.meters.c
    for i in range(0, len(ids), _CHUNK):
        query = sa.select(m.id, m.commissioned_at).where(m.id.in_(ids[i : i + _CHUNK]))
        found.update({int(r.id): r.commissioned_at.timestamp() for r in conn.execute(query)})
    return found


_INSERT_ROWS = 1000  # rows per multi-row INSERT: 7,000 parameters, inside both databases' limits
_CATEGORY = {int(code): str(category_of(code)) for code in EventCode}
_COLUMNS = ("meter_id", "code", "category", "meter_time", "received_at", "source", "value")


def _insert_new(conn: Connection, rows: Sequence[EventRow]) -> set[tuple[int, int, int]]:
    """Insert those of ``rows`` not stored yet; the keys really inserted (duplicates are not).

    Written as multi-row statements of ``_INSERT_ROWS`` with the driver's placeholders and plain
    tuples: the ORM's per-row parameter processing was about half of what storing an event cost,
    and a storm's power-ups are stored at tens of thousands a second.
    """
    if not rows:
        return set()
    if conn.dialect.name == "sqlite":
        chunks = [_event_parameters(rows[i : i + _INSERT_ROWS]) for i in range(0, len(rows), _INSERT_ROWS)]
        return _insert_new_sqlite(conn, rows, chunks)
    # ON CONFLICT … RETURNING: what another transaction stored meanwhile is skipped
    values = [(r.meter_id, r.code, _CATEGORY[r.code], r.meter_time, r.received_at, r.source, r.value) for r in rows]
    then = "ON CONFLICT (meter_id, code, meter_time) DO NOTHING RETURNING meter_id, code, meter_time"
    return {(int(a), int(b), int(c)) for a, b, c in insert_many(conn, t.meter_events, _COLUMNS, values, then=then)}


def _insert_new_sqlite(
    conn: Connection, rows: Sequence[EventRow], chunks: Sequence[tuple[int, tuple[Any, ...]]]
) -> set[tuple[int, int, int]]:
    """SQLite: take the write lock, look up which keys exist (a few rows at most), insert the rest.

    Not ``RETURNING``: pysqlite steps through returned rows one at a time and gives up the GIL at
    each step, so a thread storing 2,000 events while another thread decodes pushes waited for the
    GIL 2,000 times with the database's only write lock held (a storm measured 0.47 s holds, and
    every command and on-demand read of the platform waited behind them). Holding the write lock
    from the first statement on, nobody can store one of these keys between the look-up and the
    insert.
    """
    conn.exec_driver_sql("DELETE FROM meter_events WHERE 0")  # begins writing: SQLite's write lock is ours
    existing = _existing_keys(conn, [row.key for row in rows])
    if existing:  # rare (a retransmission, a log read overlapping pushes): build the chunks again without them
        fresh = [row for row in rows if row.key not in existing]
        chunks = [_event_parameters(fresh[i : i + _INSERT_ROWS]) for i in range(0, len(fresh), _INSERT_ROWS)]
    for count, params in chunks:
        conn.exec_driver_sql(_insert_sql(conn, count), params)
    return {row.key for row in rows} - existing


def _existing_keys(conn: Connection, keys: Sequence[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
    """Which of ``keys`` are stored: a join of a VALUES list with the unique index (SQLite plans the
    row-value ``IN (VALUES …)`` form as a scan of the whole index)."""
    found: set[tuple[int, int, int]] = set()
    mark = placeholder(conn)
    for i in range(0, len(keys), _INSERT_ROWS):
        chunk = keys[i : i + _INSERT_ROWS]
        values = ", ".join([f"({mark}, {mark}, {mark})"] * len(chunk))
        sql = (
            f"SELECT e.meter_id, e.code, e.meter_time FROM (VALUES {values}) AS k "  # noqa: S608 - placeholders only
            "CROSS JOIN meter_events AS e "
            "ON e.meter_id = k.column1 AND e.code = k.column2 AND e.meter_time = k.column3"
        )
        params = tuple(value for key in chunk for value in key)
        found.update((int(a), int(b), int(c)) for a, b, c in conn.exec_driver_sql(sql, params))
    return found


def _event_parameters(chunk: Sequence[EventRow]) -> tuple[int, tuple[Any, ...]]:
    """How many rows, and their values in column order (built before the write lock is taken)."""
    params = tuple(
        value
        for r in chunk
        for value in (r.meter_id, r.code, _CATEGORY[r.code], r.meter_time, r.received_at, r.source, r.value)
    )
    return len(chunk), params


def _insert_sql(conn: Connection, count: int) -> str:
    row_marks = "(" + ", ".join([placeholder(conn)] * len(_COLUMNS)) + ")"
    values = ", ".join([row_marks] * count)  # placeholders only: every value is a parameter
    return f"INSERT INTO meter_events ({', '.join(_COLUMNS)}) VALUES {values}"  # noqa: S608


def _insert_rejected(conn: Connection, rejected: Sequence[Rejected]) -> None:
    if not rejected:
        return
    conn.execute(
        sa.insert(t.meter_events_rejected),
        [
            {
                "meter_id": r.row.meter_id,
                "code": r.row.code,
                "meter_time": r.row.meter_time,
                "received_at": r.row.received_at,
                "source": r.row.source[:8],
                "reason": r.reason,
            }
            for r in rejected
        ],
    )


# -- queries --------------------------------------------------------------------------------------


def list_events(  # noqa: PLR0913 - the filters, all keyword-only
    conn: Connection,
    *,
    meter_id: int | None = None,
    codes: Sequence[int] | None = None,
    categories: Sequence[EventCategory | str] | None = None,
    since: int | None = None,
    until: int | None = None,
    visible: ColumnElement[bool] | None = None,
    limit: int = 100,
) -> list[EventRecord]:
    """Newest meter time first; ``since``/``until`` bound the meter time (inclusive, epoch s).

    ``visible`` is a clause on ``meters`` (``policy.visible_meters``): only those meters' events.
    """
    e = t.meter_events.c
    query = sa.select(e.id, e.meter_id, e.code, e.category, e.meter_time, e.received_at, e.source, e.value)
    if meter_id is not None:
        query = query.where(e.meter_id == meter_id)
    if codes:
        query = query.where(e.code.in_(list(codes)))
    if categories:
        query = query.where(e.category.in_([str(c) for c in categories]))
    if since is not None:
        query = query.where(e.meter_time >= since)
    if until is not None:
        query = query.where(e.meter_time <= until)
    if visible is not None:
        query = query.where(e.meter_id.in_(sa.select(t.meters.c.id).where(visible)))
    query = query.order_by(e.meter_time.desc(), e.id.desc()).limit(limit)
    return [EventRecord(*row) for row in conn.execute(query)]


def newest_log_times(conn: Connection, meter_ids: Sequence[int]) -> dict[int, int]:
    """Per meter, the meter time of its newest event read from its event log (meters without one are absent)."""
    e = t.meter_events.c
    found: dict[int, int] = {}
    ids = sorted(set(meter_ids))
    for i in range(0, len(ids), _CHUNK):
        query = (
            sa.select(e.meter_id, sa.func.max(e.meter_time))
            .where(e.meter_id.in_(ids[i : i + _CHUNK]), e.source == "log")
            .group_by(e.meter_id)
        )
        found.update({int(m): int(newest) for m, newest in conn.execute(query)})
    return found


def count_rejected(conn: Connection, *, reason: str | None = None) -> int:
    r = t.meter_events_rejected.c
    query = sa.select(sa.func.count()).select_from(t.meter_events_rejected)
    if reason is not None:
        query = query.where(r.reason == reason)
    return int(conn.execute(query).scalar_one())


def list_rejected(conn: Connection, *, limit: int = 100) -> list[Rejected]:
    """Newest first."""
    r = t.meter_events_rejected.c
    query = (
        sa.select(r.meter_id, r.code, r.meter_time, r.received_at, r.source, r.reason)
        .order_by(r.id.desc())
        .limit(limit)
    )
    return [Rejected(EventRow(*row[:5]), row[5]) for row in conn.execute(query)]


# -- push counters (replay protection that survives a restart) ------------------------------------


def load_push_counters(conn: Connection) -> dict[tuple[int, int], int]:
    """(meter id, key version) → the last invocation counter accepted from that meter's pushes."""
    p = t.push_counters.c
    return {(int(m), int(v)): int(c) for m, v, c in conn.execute(sa.select(p.meter_id, p.key_version, p.last_counter))}


def advance_push_counters(conn: Connection, counters: Mapping[tuple[int, int], int], *, now: float) -> None:
    """Raise the stored counters to these values (never lower them: batches may commit out of order).

    Multi-row upserts with plain parameters: an ``executemany`` goes to SQLite a row at a time, each
    step giving up the GIL with the write lock held (see ``_insert_new_sqlite``).
    """
    rows = [(meter, version, counter, now) for (meter, version), counter in sorted(counters.items())]
    then = (
        "ON CONFLICT (meter_id, key_version) DO UPDATE SET last_counter = CASE "
        "WHEN excluded.last_counter > push_counters.last_counter THEN excluded.last_counter "
        "ELSE push_counters.last_counter END, updated_at = excluded.updated_at"
    )
    insert_many(conn, t.push_counters, ("meter_id", "key_version", "last_counter", "updated_at"), rows, then=then)
