"""SQLite: the write-ahead log copied into the database by a thread of its own, never in a writer's commit.

By default SQLite checkpoints inside the commit that takes the log past 1,000 pages: that writer
copies the log into the database and syncs both files before its commit returns, and while it does,
openami's write gate (``db._sqlite_gate``) is still its own, so every command and on-demand read of
every process waits for it. Storing a storm's events in random meter order dirties about one index
page per event, a checkpoint every few batches; a storm measured event transactions holding the
write turn up to 0.2 s, most of it in commits. With ``WalCheckpointer`` running, the engine's
connections do not checkpoint (``wal_autocheckpoint=0``) and a thread runs a PASSIVE checkpoint
every ``every_s``: it needs no write lock, so writers go on while it copies, and a writer starting
after a complete checkpoint begins the log again from its start, so it stays small.

The platform process and the push process run one each; a process without one (a CLI command)
keeps SQLite's own checkpoints. PostgreSQL and in-memory databases need nothing: ``start`` does
nothing for them.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["WalCheckpointer"]

_log = structlog.get_logger("openami.db")
_AUTOCHECKPOINT = "openami_wal_autocheckpoint"
_SQLITE_DEFAULT_PAGES = 1000


class WalCheckpointer:
    """Checkpoints ``engine``'s SQLite file in the background while started."""

    def __init__(self, engine: Engine, *, every_s: float = 0.25) -> None:
        self._engine = engine
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # completed passes (tests, diagnostics)

    @property
    def path(self) -> str | None:
        """The database file, or None where there is nothing to checkpoint."""
        url = self._engine.url
        database = url.database or ""
        if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
            return None
        return database

    def start(self) -> None:
        path = self.path
        if path is None or self._thread is not None:
            return
        if not event.contains(self._engine, "checkout", self._checked_out):
            event.listen(self._engine, "checkout", self._checked_out)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(path,), name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after a last checkpoint; connections checked out later checkpoint themselves."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()

    def _checked_out(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        """Each connection checkpoints itself exactly while no thread does it (a dict look-up per checkout)."""
        pages = 0 if self._thread is not None else _SQLITE_DEFAULT_PAGES
        if record.info.get(_AUTOCHECKPOINT) != pages:
            dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={pages:d}")
            record.info[_AUTOCHECKPOINT] = pages

    def _run(self, path: str) -> None:
        connection = sqlite3.connect(path, timeout=0.0, check_same_thread=False)
        try:
            prepared = self._prepare(connection)
            while True:
                stopping = self._stop.wait(self._every_s)
                prepared = prepared or self._prepare(connection)
                if prepared:
                    self._checkpoint(connection)
                if stopping:
                    return
        finally:
            connection.close()

    @staticmethod
    def _prepare(connection: sqlite3.Connection) -> bool:
        """Whether the connection is set up; a file still in rollback mode and locked by a writer says no.

        The thread must outlive that: while it runs, no commit checkpoints, so a thread gone at its
        first statement would let the log grow without end.
        """
        try:
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:  # e.g. another connection switching the file to WAL right now
            _log.debug("db.sqlite.checkpointer-not-ready", reason=str(exc))
            return False
        return True

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:  # another process's checkpointer is at it: next time
            _log.debug("db.sqlite.checkpoint-skipped", reason=str(exc))
        else:
            self.checkpoints += 1
