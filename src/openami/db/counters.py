"""DLMS invocation counters, persisted so that a restart never reopens a replay window.

``client_ic_next`` is the next invocation counter the head-end will put in a frame to the meter;
``server_ic_last`` the last one it accepted from the meter. Both only ever move forward: every
update is a single statement whose SQL refuses to go backwards, whatever the caller passes and
however many workers race.

Counters per key version (the rule key rotation relies on): a meter's counter belongs to the key it
protects, and a new key is a new counter space (the meter restarts its own counter at 0). So
``server_ic_last`` belongs to the GUEK version in ``key_version``; :func:`switch_key_version` (called in
the transaction that activates a new GUEK) is the only way it may go back, and only to a newer
version; an ``advance`` for another key version leaves it alone, so a session that ran with the old
keys and ends after a rotation cannot poison the new space. ``client_ic_next`` stays one space across
versions: the head-end never reuses a counter, whatever the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db.engine import insert_many, let_waiting_writers_in
from openami.db.tables import UtcDateTime
from openami.db.tables import invocation_counters as ic

__all__ = [
    "Counters",
    "accept_server_ic",
    "advance",
    "advance_many",
    "get",
    "get_for_key",
    "reserve_client_ics",
    "reserve_client_ics_many",
    "reserve_session",
    "switch_key_version",
]

_ADVANCE_COLUMNS = "meter_id, client_ic_next, server_ic_last, updated_at"
_ADVANCE_SET = """ON CONFLICT (meter_id) DO UPDATE SET
  client_ic_next = CASE WHEN excluded.client_ic_next > invocation_counters.client_ic_next
                        THEN excluded.client_ic_next ELSE invocation_counters.client_ic_next END,
  server_ic_last = CASE WHEN invocation_counters.server_ic_last IS NULL
                          OR excluded.server_ic_last > invocation_counters.server_ic_last
                        THEN COALESCE(excluded.server_ic_last, invocation_counters.server_ic_last)
                        ELSE invocation_counters.server_ic_last END,
  updated_at = excluded.updated_at"""
_ADVANCE = sa.text(  # constant fragments only
    f"INSERT INTO invocation_counters ({_ADVANCE_COLUMNS}) VALUES (:meter_id, COALESCE(:client, 0), :server, :now) "  # noqa: S608
    + _ADVANCE_SET
).bindparams(sa.bindparam("now", type_=UtcDateTime()))

_ADVANCE_FOR_KEY_COLUMNS = "meter_id, client_ic_next, server_ic_last, updated_at, key_version"
_ADVANCE_NAMES = tuple(_ADVANCE_COLUMNS.split(", "))  # the same, for insert_many
_ADVANCE_FOR_KEY_NAMES = tuple(_ADVANCE_FOR_KEY_COLUMNS.split(", "))
_ADVANCE_FOR_KEY_SET = """ON CONFLICT (meter_id) DO UPDATE SET
  client_ic_next = CASE WHEN excluded.client_ic_next > invocation_counters.client_ic_next
                        THEN excluded.client_ic_next ELSE invocation_counters.client_ic_next END,
  server_ic_last = CASE WHEN excluded.key_version <> invocation_counters.key_version
                        THEN invocation_counters.server_ic_last
                        WHEN invocation_counters.server_ic_last IS NULL
                          OR excluded.server_ic_last > invocation_counters.server_ic_last
                        THEN COALESCE(excluded.server_ic_last, invocation_counters.server_ic_last)
                        ELSE invocation_counters.server_ic_last END,
  updated_at = excluded.updated_at"""
_ADVANCE_FOR_KEY = sa.text(  # constant fragments only
    f"INSERT INTO invocation_counters ({_ADVANCE_FOR_KEY_COLUMNS}) "  # noqa: S608
    "VALUES (:meter_id, COALESCE(:client, 0), :server, :now, :key_version) " + _ADVANCE_FOR_KEY_SET
).bindparams(sa.bindparam("now", type_=UtcDateTime()))

_SWITCH = sa.text("""
INSERT INTO invocation_counters (meter_id, client_ic_next, server_ic_last, updated_at, key_version)
VALUES (:meter_id, 0, :server, :now, :key_version)
ON CONFLICT (meter_id) DO UPDATE SET
  server_ic_last = CASE WHEN excluded.key_version > invocation_counters.key_version
                        THEN excluded.server_ic_last
                        WHEN excluded.key_version = invocation_counters.key_version
                         AND (invocation_counters.server_ic_last IS NULL
                              OR excluded.server_ic_last > invocation_counters.server_ic_last)
                        THEN excluded.server_ic_last
                        ELSE invocation_counters.server_ic_last END,
  key_version = CASE WHEN excluded.key_version > invocation_counters.key_version
                     THEN excluded.key_version ELSE invocation_counters.key_version END,
  updated_at = excluded.updated_at
""").bindparams(sa.bindparam("now", type_=UtcDateTime()))

_ENSURE = sa.text("""
INSERT INTO invocation_counters (meter_id, client_ic_next, server_ic_last, updated_at)
VALUES (:meter_id, 0, NULL, :now) ON CONFLICT (meter_id) DO NOTHING
""").bindparams(sa.bindparam("now", type_=UtcDateTime()))


# Built once, with bound parameters: every command's session reserves a block, and building a statement
# and its cache key anew costs more CPU than SQLite takes to run it.
_GET = sa.select(ic.c.client_ic_next, ic.c.server_ic_last, ic.c.key_version).where(
    ic.c.meter_id == sa.bindparam("meter_id")
)
_RESERVE = (
    sa.update(ic)
    .where(ic.c.meter_id == sa.bindparam("where_meter_id"))
    .values(client_ic_next=ic.c.client_ic_next + sa.bindparam("count"), updated_at=sa.bindparam("now"))
    .returning(ic.c.client_ic_next)
)
_RESERVE_SESSION = (  # a session's block and the meter's counters after it, in one round trip
    sa.update(ic)
    .where(ic.c.meter_id == sa.bindparam("where_meter_id"))
    .values(client_ic_next=ic.c.client_ic_next + sa.bindparam("count"), updated_at=sa.bindparam("now"))
    .returning(ic.c.client_ic_next, ic.c.server_ic_last, ic.c.key_version)
)


class Counters(NamedTuple):
    client_ic_next: int
    server_ic_last: int | None


def get(conn: Connection, meter_id: int) -> Counters:
    """The meter's counters; ``Counters(0, None)`` for a meter never talked to."""
    return get_for_key(conn, meter_id)[0]


def get_for_key(conn: Connection, meter_id: int) -> tuple[Counters, int]:
    """The meter's counters and the GUEK version ``server_ic_last`` belongs to (1 if never talked to)."""
    row = conn.execute(_GET, {"meter_id": meter_id}).one_or_none()
    if row is None:
        return Counters(0, None), 1
    return Counters(int(row[0]), None if row[1] is None else int(row[1])), int(row[2])


def advance(
    conn: Connection,
    meter_id: int,
    *,
    now: datetime,
    client_ic_next: int | None = None,
    server_ic_last: int | None = None,
    key_version: int | None = None,
) -> Counters:
    """Move either counter forward to the given value; a value not greater than the stored one is ignored.

    With ``key_version``, ``server_ic_last`` is the counter seen under that GUEK version: ignored
    unless it is the stored one (see the module's rule). Returns the counters as stored afterwards.
    """
    values = {"meter_id": meter_id, "client": client_ic_next, "server": server_ic_last, "now": now}
    if key_version is None:
        conn.execute(_ADVANCE, values)
    else:
        conn.execute(_ADVANCE_FOR_KEY, {**values, "key_version": key_version})
    return get(conn, meter_id)


def advance_many(
    conn: Connection, rows: Sequence[tuple[int, int | None, int | None, int | None]], *, now: datetime
) -> None:
    """``advance`` for many meters: rows are (meter_id, client_ic_next, server_ic_last, key_version or
    None), with the same never-backwards rule as ``advance``; rows without a key version first.

    Multi-row upserts (``insert_many``: ``VALUES`` lists on SQLite, arrays on PostgreSQL, where psycopg
    parsed a long ``VALUES`` list's placeholders in Python at every execution), not ``executemany``:
    that goes to SQLite a row at a time, each step giving up the GIL with the write lock held
    (``db.meter_events``). A meter appears once per statement
    (PostgreSQL refuses to update a row twice in one): its later rows go in later statements, in order.
    """
    stamp = _bind_now(conn, now)
    plain = [(m, 0 if c is None else c, sv, stamp) for m, c, sv, k in rows if k is None]
    keyed = [(m, 0 if c is None else c, sv, stamp, k) for m, c, sv, k in rows if k is not None]
    for values in _rounds(plain):
        insert_many(conn, ic, _ADVANCE_NAMES, values, then=_ADVANCE_SET, per_statement=_UPSERT_ROWS)
    for values in _rounds(keyed):
        insert_many(conn, ic, _ADVANCE_FOR_KEY_NAMES, values, then=_ADVANCE_FOR_KEY_SET, per_statement=_UPSERT_ROWS)


_UPSERT_ROWS = 500  # rows per multi-row statement on SQLite (2,500 parameters at most); arrays on PostgreSQL


def _rounds(rows: Sequence[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """``rows`` split so that each meter (the first value) is in a round at most once, order kept."""
    rounds: list[list[tuple[Any, ...]]] = []
    seen: dict[int, int] = {}
    for row in rows:
        n = seen.get(row[0], 0)
        seen[row[0]] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(row)
    return rounds


def _bind_now(conn: Connection, now: datetime) -> Any:
    process = UtcDateTime().bind_processor(conn.dialect)
    return now if process is None else process(now)


def reserve_client_ics_many(
    conn: Connection, meter_ids: Sequence[int], count: int, *, now: datetime
) -> dict[int, tuple[int, Counters, int]]:
    """``reserve_client_ics`` for many meters at once: meter → (first reserved IC, counters after, key version).

    Each meter's update and read run in one write transaction of the caller's, so no other writer can
    reserve in between. On SQLite the meters go in parts of ``_RESERVE_PART``, between which a waiting
    writer gets the write lock (``let_waiting_writers_in``): an outage's 512 confirmation pings held it
    15-20 ms while a command waited. What a part reserved stands on its own if a later one fails:
    counters only move forward, so a block reserved and never used is a gap, never a reuse.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    reserved: dict[int, tuple[int, Counters, int]] = {}
    ordered = sorted(set(meter_ids))
    step = _RESERVE_PART if conn.dialect.name == "sqlite" else _UPSERT_ROWS
    stamp = _bind_now(conn, now)
    for i in range(0, len(ordered), step):
        part = ordered[i : i + step]
        rows = [(m, 0, None, stamp) for m in part]  # a row for every meter (multi-row, as advance_many)
        conflict = "ON CONFLICT (meter_id) DO NOTHING"
        insert_many(conn, ic, _ADVANCE_NAMES, rows, then=conflict, per_statement=_UPSERT_ROWS)
        conn.execute(
            sa.update(ic)
            .where(ic.c.meter_id.in_(part))
            .values(client_ic_next=ic.c.client_ic_next + count, updated_at=now)
        )
        query = sa.select(ic.c.meter_id, ic.c.client_ic_next, ic.c.server_ic_last, ic.c.key_version).where(
            ic.c.meter_id.in_(part)
        )
        for meter_id, client_next, server_last, version in conn.execute(query):
            counters = Counters(int(client_next), None if server_last is None else int(server_last))
            reserved[int(meter_id)] = (int(client_next) - count, counters, int(version))
        let_waiting_writers_in(conn)
    return reserved


_RESERVE_PART = 100
"""Meters reserved between two chances to hand SQLite's write lock over (about 2-3 ms of holding it)."""


def switch_key_version(
    conn: Connection, meter_id: int, key_version: int, *, server_ic_last: int | None, now: datetime
) -> Counters:
    """A new GUEK version became active: its counter space replaces the old one (``server_ic_last`` =
    what was seen under the new key, None if nothing yet). A version not newer than the stored one
    only advances ``server_ic_last`` as usual. Call it in the transaction that activates the key."""
    conn.execute(_SWITCH, {"meter_id": meter_id, "key_version": key_version, "server": server_ic_last, "now": now})
    return get(conn, meter_id)


def switch_key_versions(conn: Connection, meter_ids: Sequence[int], key_version: int, *, now: datetime) -> None:
    """:func:`switch_key_version` for many meters that have seen nothing under the new key yet."""
    params = [{"meter_id": m, "key_version": key_version, "server": None, "now": now} for m in meter_ids]
    if params:
        conn.execute(_SWITCH, params)


def reserve_client_ics(conn: Connection, meter_id: int, count: int, *, now: datetime) -> int:
    """Atomically reserve ``count`` consecutive client invocation counters; returns the first one.

    Reserve before sending: a crash then skips counters but never reuses one.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    conn.execute(_ENSURE, {"meter_id": meter_id, "now": now})
    params = {"where_meter_id": meter_id, "count": count, "now": now}
    return int(conn.execute(_RESERVE, params).scalar_one()) - count


def reserve_session(conn: Connection, meter_id: int, count: int, *, now: datetime) -> tuple[int, Counters, int]:
    """``reserve_client_ics`` and ``get_for_key`` in one statement (a row exists once the meter was
    talked to): (first reserved IC, counters after, the key version ``server_ic_last`` belongs to)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    params = {"where_meter_id": meter_id, "count": count, "now": now}
    row = conn.execute(_RESERVE_SESSION, params).one_or_none()
    if row is None:  # never talked to: the row first
        conn.execute(_ENSURE, {"meter_id": meter_id, "now": now})
        row = conn.execute(_RESERVE_SESSION, params).one()
    client_next = int(row[0])
    return client_next - count, Counters(client_next, None if row[1] is None else int(row[1])), int(row[2])


def accept_server_ic(conn: Connection, meter_id: int, invocation_counter: int, *, now: datetime) -> bool:
    """Record ``invocation_counter`` from the meter if it is greater than the last accepted one.

    Returns False for a replay (equal or smaller): the frame must then be dropped.
    """
    conn.execute(_ENSURE, {"meter_id": meter_id, "now": now})
    stmt = (
        sa.update(ic)
        .where(
            ic.c.meter_id == meter_id,
            sa.or_(ic.c.server_ic_last.is_(None), ic.c.server_ic_last < invocation_counter),
        )
        .values(server_ic_last=invocation_counter, updated_at=now)
    )
    return conn.execute(stmt).rowcount == 1
