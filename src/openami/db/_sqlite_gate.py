"""Turn-taking for SQLite's single writer inside one process, with bulk writers yielding to the rest.

SQLite lets one connection write at a time; the others wait in its busy handler, which polls with
growing sleeps (up to 100 ms) and is not fair: a bulk writer that commits and begins again at once
keeps winning, and a switch command's small write waits through several ingest batches (the switch
benchmark saw seconds). Every SQLite connection the engine opens is a ``GatedConnection``: its first
writing statement of a transaction takes the file's gate, its commit or rollback gives it back. A
connection inside ``bulk_writes()`` (the MDM's ingest) takes the gate only while no other writer of
the process waits for it, so commands, audit entries and bookkeeping go first; the ingest writes in
short transactions to let them in.

Across processes (``openami run`` and a CLI command, or several platform processes on one file) the
gate continues in POSIX record locks on ``<database>-writer.lock``: its byte 0 is the write turn,
held from a connection's first writing statement to its commit; a process with a writer other than
a bulk one waiting holds a shared lock on byte 1, and a bulk writer of another process waits (up to
``BULK_PATIENCE_S``) while it sees one. Without this, a command's write in one process waited in
SQLite's busy handler, which polls with growing sleeps, through another process's bulk transactions
(a measured storm: 1.6 s for one command's outcome). Record locks belong to the process, so threads
never block each other on them (the in-process gate orders the threads), and the kernel drops them
when a process dies.

A long transaction can also hand the lock over in its middle: at a point where what it wrote so far
may stand on its own, ``GatedConnection.yield_turn`` commits it when another writer (not a bulk one)
waits, here or in another process, and the next write takes a turn again, after that writer's (as
a bulk writer's turn, whatever the transaction: one that is not would take the turn straight back
while the waiting thread wakes up). A waiting command then waits for one part of a push batch, an
outage write or a reservation of many meters' counters, not the whole (a measured storm: waits of
up to 17-22 ms, bulk transactions of up to 37 ms).

A writer that waits longer than the busy timeout goes on without the gate, and SQLite decides as
before.
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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog

try:
    import fcntl
except ImportError:  # not on Windows: the gate then orders this process's writers only
    fcntl = None  # type: ignore[assignment]

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


class _ProcessLocks:
    """The gate's part across processes: POSIX record locks on ``<database>-writer.lock``."""

    _TURN, _URGENT = 0, 1  # the bytes locked

    def __init__(self, database: str) -> None:
        self._path = f"{database}-writer.lock"
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:  # opened on first use, kept open: closing any descriptor of the file drops its locks
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def take_turn(self, *, bulk: bool, deadline: float, yield_until: float, own_urgent: Callable[[], int]) -> bool:
        """Wait for the write turn; a bulk writer also lets other processes' urgent writers go first
        until ``yield_until``. False at ``deadline``."""
        pause = 0.0005
        while True:
            polite = bulk and time.monotonic() < yield_until and not own_urgent() and self.urgent_elsewhere()
            if not polite and self._try(fcntl.LOCK_EX, self._TURN):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    def end_turn(self) -> None:
        fcntl.lockf(self._file(), fcntl.LOCK_UN, 1, self._TURN)

    def urgent(self, waiting: bool) -> None:
        """Say whether a writer of this process other than a bulk one waits (a shared lock on byte 1)."""
        fcntl.lockf(self._file(), fcntl.LOCK_SH if waiting else fcntl.LOCK_UN, 1, self._URGENT)

    def urgent_elsewhere(self) -> bool:
        """Whether another process holds byte 1 (call only while this process holds none of it: taking and
        dropping an exclusive lock would also drop this process's own shared one)."""
        if not self._try(fcntl.LOCK_EX, self._URGENT):
            return True
        fcntl.lockf(self._file(), fcntl.LOCK_UN, 1, self._URGENT)
        return False

    def _try(self, kind: int, byte: int) -> bool:
        try:
            fcntl.lockf(self._file(), kind | fcntl.LOCK_NB, 1, byte)
        except OSError:  # EAGAIN/EACCES: another process holds it
            return False
        return True


class _Gate:
    def __init__(self, database: str | None = None) -> None:
        self._cond = threading.Condition()
        self._holder: weakref.ref[GatedConnection] | None = None
        self._urgent_waiting = 0
        self._processes = _ProcessLocks(database) if database is not None and fcntl is not None else None
        self._turn_held = False

    def acquire(self, conn: GatedConnection, *, bulk: bool, timeout_s: float) -> bool:
        """Wait for the gate; False after ``timeout_s``. A bulk writer also lets every other waiter go
        first (of this process and, through the lock file, of others), for up to ``BULK_PATIENCE_S``:
        then it takes its turn, so it is slowed, never starved."""
        started = time.monotonic()
        deadline = started + timeout_s
        yield_until = started + BULK_PATIENCE_S if bulk else started
        if not bulk:
            self._urgent(+1)
        try:
            if not self._take_local(conn, bulk=bulk, deadline=deadline, yield_until=yield_until):
                return False
            if self._processes is None:
                return True
            if self._processes.take_turn(
                bulk=bulk, deadline=deadline, yield_until=yield_until, own_urgent=lambda: self._urgent_waiting
            ):
                self._turn_held = True
                return True
            self.release(conn)
            return False
        finally:
            if not bulk:
                self._urgent(-1)

    def writers_waiting(self) -> bool:
        """Whether a writer other than a bulk one waits for the gate, in this process or in another."""
        with self._cond:  # this process's count and its shared lock on the lock file change together
            if self._urgent_waiting:
                return True
            return self._processes is not None and self._processes.urgent_elsewhere()

    def _urgent(self, step: int) -> None:
        with self._cond:
            self._urgent_waiting += step
            if self._processes is not None and self._urgent_waiting == (1 if step > 0 else 0):
                self._processes.urgent(step > 0)

    def _take_local(self, conn: GatedConnection, *, bulk: bool, deadline: float, yield_until: float) -> bool:
        with self._cond:
            while self._busy() or (bulk and self._urgent_waiting and time.monotonic() < yield_until):
                remaining = min(deadline, yield_until if not self._busy() else deadline) - time.monotonic()
                if time.monotonic() >= deadline:
                    return False
                self._cond.wait(max(0.001, remaining))
            self._holder = weakref.ref(conn, self._holder_gone)
            return True

    def release(self, conn: GatedConnection) -> None:
        with self._cond:
            if self._holder is not None and self._holder() is conn:
                self._free()

    def _free(self) -> None:
        if self._turn_held and self._processes is not None:
            self._turn_held = False
            self._processes.end_turn()
        self._holder = None
        self._cond.notify_all()

    def _busy(self) -> bool:
        return self._holder is not None and self._holder() is not None

    def _holder_gone(self, ref: object) -> None:  # a holder collected without commit or rollback
        with self._cond:
            if self._holder is ref:
                self._free()
            else:
                self._cond.notify_all()


_gates: dict[str, _Gate] = {}
_gates_lock = threading.Lock()


def gate_for(database: str) -> _Gate:
    """The process's gate for one database file (by its real path)."""
    with _gates_lock:
        gate = _gates.get(database)
        if gate is None:
            gate = _gates[database] = _Gate(database)
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
        self._yielded = False  # handed its turn over: its next write waits behind the writers waiting then

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
            bulk, self._yielded = _bulk.get() or self._yielded, False
            self._holding = self._gate.acquire(self, bulk=bulk, timeout_s=self._timeout_s)
            if not self._holding:  # another writer of this process held the write lock all that time
                _log.warning("db.sqlite.gate-timeout", waited_s=self._timeout_s, bulk=bulk)

    def after(self) -> None:
        if self._holding and not self.in_transaction:  # autocommitted, or failed before beginning
            self._release()

    def commit(self) -> None:
        self._yielded = False
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                self._release()

    def rollback(self) -> None:
        self._yielded = False
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()

    def yield_turn(self) -> bool:
        """Commit the transaction now if this connection holds the write turn and another writer (not a
        bulk one) waits for it; its next write takes a turn again, as a bulk writer's (after the
        waiting ones: a writer that is not a bulk one would otherwise take the turn straight back,
        before they wake). Call only where what the transaction wrote so far may stand on its own.
        Returns whether it committed."""
        if not (self._holding and self.in_transaction and self._gate.writers_waiting()):
            return False
        self.commit()
        self._yielded = True
        return True

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._gate.release(self)
