"""Engine creation for the two supported databases, selected by URL.

SQLite (the embedded default) is opened in WAL mode with foreign keys on, ``synchronous=NORMAL``
(durable at checkpoints, crash-safe, no fsync per commit) and a busy timeout so that the head-end,
the MDM and the API can share one file. PostgreSQL is reached through psycopg 3
(``postgresql+psycopg://``; a bare ``postgresql://`` URL is taken to mean the same).

pysqlite's own transaction handling is kept: it opens a (deferred) transaction right before the
first write of a unit of work, so a transaction takes the write lock with its first statement and
never has to upgrade a stale read snapshot (which SQLite would refuse at once, without waiting).
Repositories therefore do their reads and writes as single atomic statements.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from openami.db._sqlite_gate import GatedConnection, bulk_writes
from openami.errors import InvalidInput, StorageUnavailable

__all__ = [
    "bulk_writes", "connect_check", "create_engine", "dialect_name", "insert_many", "is_postgres",
    "let_waiting_writers_in", "placeholder", "safe_url",
]  # fmt: skip

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_CACHE_KIB = 65_536
PG_CONNECT_TIMEOUT_S = 5


def create_engine(url: str | URL, *, check: bool = True, echo: bool = False) -> Engine:
    """An Engine for ``url``; with ``check`` it connects once so that a database that is down fails now.

    Raises InvalidInput for a URL that is neither SQLite nor PostgreSQL, and StorageUnavailable (with
    the URL, password hidden, and the driver's reason) when the database cannot be reached.
    """
    parsed = _normalise(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(parsed, echo=echo)
    elif backend == "postgresql":
        engine = sa.create_engine(
            parsed,
            echo=echo,
            pool_pre_ping=True,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "openami"},
        )
    else:
        raise InvalidInput(f"unsupported database URL {safe_url(parsed)!r}: use sqlite:///PATH or postgresql://...")
    if check:
        connect_check(engine)
    return engine


def connect_check(engine: Engine) -> None:
    """Open one connection and run ``SELECT 1``; raises StorageUnavailable with a clear reason."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except exc.DBAPIError as error:  # refused, unreachable, timed out, not a database file, bad credentials
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else type(error).__name__
        raise StorageUnavailable(f"database {safe_url(engine.url)} is unavailable: {reason}") from error


def safe_url(url: str | URL) -> str:
    """The URL as text with any password replaced by ``***`` (for messages and logs)."""
    return make_url(url).render_as_string(hide_password=True)


def dialect_name(conn: Connection | Engine) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    return conn.dialect.name


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


def _normalise(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise InvalidInput(f"not a database URL: {error}") from None
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageUnavailable(f"database {safe_url(url)} is unavailable: {error.strerror}") from error
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "factory": GatedConnection}
    engine = sa.create_engine(url, echo=echo, connect_args=connect_args)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB:d}")
    finally:
        cursor.close()


def let_waiting_writers_in(conn: Connection) -> bool:
    """SQLite: commit what ``conn``'s transaction wrote so far if another writer (not a bulk one: a
    command, an on-demand read's readings) waits for the write lock, here or in another process; the
    transaction then goes on as a new one, whose next write waits for its turn after theirs. Call it in
    a long write (a bulk one, or one such as a reservation of hundreds of meters' counters), only where
    what was written so far may stand on its own (a later failure rolls back the part after the last
    commit only). Returns whether it committed. PostgreSQL: nothing (its
    writers lock rows, not the database)."""
    if conn.dialect.name != "sqlite":
        return False
    dbapi = conn.connection.dbapi_connection
    return isinstance(dbapi, GatedConnection) and dbapi.yield_turn()


def placeholder(conn: Connection) -> str:
    """The driver's parameter marker for hand-written multi-row statements (psycopg: format; sqlite3: qmark)."""
    return "%s" if conn.dialect.name == "postgresql" else "?"


def insert_many(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    then: str = "",
    per_statement: int = 1000,
) -> list[Any]:
    """INSERT ``rows`` (values in ``columns`` order, every one a parameter), followed by ``then`` (a
    constant ``ON CONFLICT …``/``RETURNING …`` clause); what a ``RETURNING`` returned, as rows.

    SQLite: multi-row ``VALUES`` lists of ``per_statement`` rows (an ``executemany`` goes to SQLite a
    row at a time, giving up the GIL at each with the write lock held). PostgreSQL: one array per
    column, ``SELECT * FROM unnest(…)``: psycopg parses the placeholders of any statement longer than
    its 4 KB cache limit in Python, each time it runs — a 1,000-row ``VALUES`` list took longer to parse
    than the server took to insert it (a storm's 54,000 affected meters: 2.9 of 5.2 s).
    """
    returned: list[Any] = []
    postgres = conn.dialect.name == "postgresql"
    step = per_statement * 10 if postgres else per_statement  # arrays cost no parsing: fewer, larger statements
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        if postgres:
            sql, params = _unnest_insert(conn, table, columns, chunk)
        else:
            marks = "(" + ", ".join(["?"] * len(columns)) + ")"
            sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([marks] * len(chunk))}"  # noqa: S608
            params = tuple(itertools.chain.from_iterable(chunk))
        result = conn.exec_driver_sql(f"{sql} {then}" if then else sql, params)
        if result.returns_rows:
            returned.extend(result.all())
    return returned


def _unnest_insert(
    conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> tuple[str, tuple[list[Any], ...]]:
    """PostgreSQL: the statement and one array per column (floats made floats: psycopg types an array by
    its first element, and an int there would make the column's later floats fail)."""
    types = [table.c[name].type for name in columns]
    arrays = tuple(list(column) for column in zip(*rows, strict=True))
    for i, kind in enumerate(types):
        if isinstance(kind, sa.Float):
            arrays[i][:] = [None if v is None else float(v) for v in arrays[i]]
    casts = ", ".join(f"%s::{kind.compile(dialect=conn.dialect)}[]" for kind in types)
    # constant table and column names and their types only: every value is a parameter
    return f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({casts})", arrays  # noqa: S608
