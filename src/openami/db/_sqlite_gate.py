"""Turn-taking for SQLite's single writer inside one process, with bulk writers yielding to the rest.

SQLite lets one connection write at a time; the others wait in its busy handler, which polls with
growing sleeps (up to 100 ms) and is not fair: a bulk writer that commits and begins again at once
keeps winning, and a switch command's small write waits through several ingest batches (the switch
benchmark saw seconds). Every SQLite connection the engine opens is a ``GatedConnection``: its first
writing statement of a transaction takes the file's gate, its commit or rollback gives it back. A
connection inside ``bulk_writes()`` (the MDM's ingest) takes the gate only while no other writer of
the process waits for it, so commands, audit entries and bookkeeping go first; the ingest writes in
short transactions to let them in.

The gate only orders writers of this process; other processes still meet SQLite's own lock. A writer
that waits longer than the busy timeout goes on without the gate, and SQLite decides as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import structlog

__all__ = ["GatedConnection", "bulk_writes", "gate_for"]

_WRITE_VERBS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "VACUUM", "REINDEX", "ANALYZE", "WITH"}
)
_log = structlog.get_logger("openami.db")
BULK_PATIENCE_S = 1.0
"""How long a bulk writer lets other writers go first before it takes its turn anyway."""

_bulk: contextvars.ContextVar[bool] = contextvars.ContextVar("openami_sqlite_bulk", default=False)


@contextlib.contextmanager
def bulk_writes() -> Iterator[None]:
    """Writes in this context yield the gate to every other writer of the process."""
    token = _bulk.set(True)
    try:
        yield
    finally:
        _bulk.reset(token)


class _Gate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: weakref.ref[GatedConnection] | None = None
        self._urgent_waiting = 0

    def acquire(self, conn: GatedConnection, *, bulk: bool, timeout_s: float) -> bool:
        """Wait for the gate; False after ``timeout_s``. A bulk writer also lets every other waiter go
        first, for up to ``BULK_PATIENCE_S``: then it takes its turn, so it is slowed, never starved."""
        started = time.monotonic()
        deadline = started + timeout_s
        yield_until = started + BULK_PATIENCE_S if bulk else started
        with self._cond:
            if not bulk:
                self._urgent_waiting += 1
            try:
                while self._busy() or (self._urgent_waiting and time.monotonic() < yield_until):
                    remaining = min(deadline, yield_until if not self._busy() else deadline) - time.monotonic()
                    if time.monotonic() >= deadline:
                        return False
                    self._cond.wait(max(0.001, remaining))
                self._holder = weakref.ref(conn, self._holder_gone)
                return True
            finally:
                if not bulk:
                    self._urgent_waiting -= 1

    def release(self, conn: GatedConnection) -> None:
        with self._cond:
            if self._holder is not None and self._holder() is conn:
                self._holder = None
                self._cond.notify_all()

    def _busy(self) -> bool:
        return self._holder is not None and self._holder() is not None

    def _holder_gone(self, _ref: object) -> None:  # a holder collected without commit or rollback
        with self._cond:
            self._cond.notify_all()


_gates: dict[str, _Gate] = {}
_gates_lock = threading.Lock()


def gate_for(database: str) -> _Gate:
    """The process's gate for one database file (by its real path)."""
    with _gates_lock:
        gate = _gates.get(database)
        if gate is None:
            gate = _gates[database] = _Gate()
        return gate


_FIRST_WORD = re.compile(r"\s*(\w+)")


def _writes(sql: str) -> bool:
    """Whether a statement writes, from its first word (read without copying the statement: every
    statement of a connection not yet holding the gate passes here)."""
    head = _FIRST_WORD.match(sql)
    return head is not None and head.group(1).upper() in _WRITE_VERBS


class GatedCursor(sqlite3.Cursor):
    """Takes its connection's gate before the first writing statement of a transaction."""

    connection: GatedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> GatedCursor:
        self.connection.before(sql)
        try:
            super().execute(sql, parameters)
        finally:
            self.connection.after()
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> GatedCursor:
        self.connection.before(sql)
        try:
            super().executemany(sql, seq_of_parameters)
        finally:
            self.connection.after()
        return self

    def executescript(self, sql_script: str, /) -> GatedCursor:
        self.connection.before("CREATE")  # a script may write anything
        try:
            super().executescript(sql_script)
        finally:
            self.connection.after()
        return self


class GatedConnection(sqlite3.Connection):
    """A pysqlite connection (``sqlite3.connect(factory=...)``) that writes only when holding the gate."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        name = str(database)
        in_memory = name in ("", ":memory:") or name.startswith("file:")
        self._gate = _Gate() if in_memory else gate_for(os.path.realpath(name))
        self._timeout_s = float(kwargs.get("timeout", 5.0))
        self._holding = False

    def cursor(self, factory: Any = GatedCursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Any:
        return self.cursor().executescript(sql_script)

    def before(self, sql: str) -> None:
        if not self._holding and _writes(sql):
            self._holding = self._gate.acquire(self, bulk=_bulk.get(), timeout_s=self._timeout_s)
            if not self._holding:  # another writer of this process held the write lock all that time
                _log.warning("db.sqlite.gate-timeout", waited_s=self._timeout_s, bulk=_bulk.get())

    def after(self) -> None:
        if self._holding and not self.in_transaction:  # autocommitted, or failed before beginning
            self._release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._gate.release(self)
