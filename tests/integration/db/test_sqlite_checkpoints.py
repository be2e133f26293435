"""The background checkpointer: SQLite's log reaches the database file without a writer's commit doing it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa

from openami.db.checkpoints import WalCheckpointer
from openami.db.engine import create_engine

_PAGE = 4096


def _autocheckpoint(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def _write_pages(engine: sa.Engine, pages: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS scratch (x BLOB)")
    for _ in range(pages // 100):  # many commits, as a platform's writers make them
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO scratch (x) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
                "SELECT randomblob(3000) FROM n"
            )


def _wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_thread_checkpoints_and_commits_do_not(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    engine = create_engine(f"sqlite:///{path}")
    checkpoints = WalCheckpointer(engine, every_s=3600)  # passes only when the test asks (stop: the last one)
    checkpoints.start()
    try:
        assert _autocheckpoint(engine) == 0
        _write_pages(engine, 3000)  # three times the 1,000 pages at which a commit would checkpoint
        main_file = path.stat().st_size
        assert main_file < 1000 * _PAGE, "a commit checkpointed"
    finally:
        checkpoints.stop()  # one last pass
    assert checkpoints.checkpoints == 1
    assert path.stat().st_size > 3000 * _PAGE  # the log is in the database file now
    plain = sqlite3.connect(path)
    busy, logged, copied = plain.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    plain.close()
    assert (busy, logged) == (0, copied)
    assert _autocheckpoint(engine) == 1000  # stopped: connections checkpoint themselves again
    engine.dispose()


def test_passes_run_every_interval(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'i.sqlite3'}")
    checkpoints = WalCheckpointer(engine, every_s=0.02)
    checkpoints.start()
    try:
        _wait_for(lambda: checkpoints.checkpoints >= 3)
    finally:
        checkpoints.stop()
    engine.dispose()


def test_nothing_to_do_for_memory_databases() -> None:
    engine = create_engine("sqlite://")
    checkpoints = WalCheckpointer(engine)
    assert checkpoints.path is None
    checkpoints.start()
    checkpoints.stop()
    assert checkpoints.checkpoints == 0


def test_a_file_locked_when_the_thread_starts_is_checkpointed_once_free(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    engine = create_engine(f"sqlite:///{path}")
    engine.dispose()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")  # rollback mode, where a writer locks out every reader
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN EXCLUSIVE")
    checkpoints = WalCheckpointer(engine, every_s=0.02)
    checkpoints.start()
    try:
        time.sleep(0.1)  # several passes find the file locked
        assert checkpoints.checkpoints == 0
        writer.execute("COMMIT")
        writer.close()
        _wait_for(lambda: checkpoints.checkpoints >= 1)
    finally:
        checkpoints.stop()
    engine.dispose()
