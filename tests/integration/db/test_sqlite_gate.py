"""The SQLite write gate: bulk writers yield to the others (in this process and in others), and the gate
is always given back."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from openami.db._sqlite_gate import GatedConnection, bulk_writes, gate_for
from openami.db.engine import create_engine, let_waiting_writers_in


def _connect(path: Path) -> GatedConnection:
    conn = sqlite3.connect(path, timeout=10, factory=GatedConnection, check_same_thread=False)
    assert isinstance(conn, GatedConnection)
    return conn


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "gate.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (who TEXT)")
    return path


def _waiters(path: Path) -> int:
    return gate_for(str(path.resolve()))._urgent_waiting


def _until_a_writer_waits(path: Path, timeout_s: float = 5.0) -> None:
    """Until a writer of this process (not a bulk one) waits for the gate, or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while _waiters(path) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_waiting_command_writes_before_a_bulk_writer_that_asked_first(db: Path) -> None:
    holder = _connect(db)
    holder.execute("INSERT INTO t VALUES ('holder')")  # holds the gate until commit
    order: list[str] = []

    def write(who: str, bulk: bool) -> None:
        conn = _connect(db)
        if bulk:
            with bulk_writes():
                conn.execute("INSERT INTO t VALUES (?)", (who,))
        else:
            conn.execute("INSERT INTO t VALUES (?)", (who,))
        order.append(who)
        time.sleep(0.05)  # still holding: the other one must wait for this commit
        conn.commit()
        conn.close()

    bulk = threading.Thread(target=write, args=("bulk", True))
    bulk.start()
    time.sleep(0.1)
    urgent = threading.Thread(target=write, args=("command", False))
    urgent.start()
    _until_a_writer_waits(db)
    holder.commit()
    bulk.join(10)
    urgent.join(10)
    holder.close()
    assert order == ["command", "bulk"]
    with sqlite3.connect(db) as check:
        assert sorted(r[0] for r in check.execute("SELECT who FROM t")) == ["bulk", "command", "holder"]


@pytest.mark.parametrize("end", ["commit", "rollback", "close", "autocommit", "failed"])
def test_the_gate_is_given_back_however_a_transaction_ends(db: Path, end: str) -> None:
    first = _connect(db)
    if end == "autocommit":
        first.isolation_level = None
    statement = "INSERT INTO nowhere VALUES (1)" if end == "failed" else "INSERT INTO t VALUES ('first')"
    try:
        first.execute(statement)
    except sqlite3.OperationalError:
        assert end == "failed"
    if end in ("commit", "rollback", "close"):
        getattr(first, end)()
    second = _connect(db)
    started = time.monotonic()
    second.execute("INSERT INTO t VALUES ('second')")
    second.commit()
    assert time.monotonic() - started < 5  # not the 10 s gate timeout
    second.close()
    first.close()


def test_reads_do_not_wait_for_the_gate(db: Path) -> None:
    writer = _connect(db)
    writer.execute("INSERT INTO t VALUES ('pending')")
    reader = _connect(db)
    started = time.monotonic()
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)  # WAL: the committed state
    assert time.monotonic() - started < 1
    writer.rollback()
    reader.close()
    writer.close()


def test_engines_open_gated_connections(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'e.sqlite3'}")
    try:
        with engine.connect() as conn:
            assert isinstance(conn.connection.driver_connection, GatedConnection)
    finally:
        engine.dispose()


def test_a_writer_that_waits_out_the_gate_is_logged_and_meets_sqlites_own_lock(db: Path) -> None:
    holder = _connect(db)
    holder.execute("INSERT INTO t VALUES ('holder')")  # holds the gate (and SQLite's write lock)
    late = sqlite3.connect(db, timeout=0.2, factory=GatedConnection, check_same_thread=False)
    try:
        with capture_logs() as logs, pytest.raises(sqlite3.OperationalError, match="locked"):
            late.execute("INSERT INTO t VALUES ('late')")
        assert [entry["event"] for entry in logs] == ["db.sqlite.gate-timeout"]
        assert logs[0]["waited_s"] == pytest.approx(0.2)
    finally:
        holder.commit()
        holder.close()
        late.close()


_BULK_LOOP = textwrap.dedent(
    """
    import sqlite3, sys, time
    from openami.db._sqlite_gate import GatedConnection, bulk_writes
    conn = sqlite3.connect(sys.argv[1], timeout=10, factory=GatedConnection)
    for i in range(int(sys.argv[2])):
        with bulk_writes():
            conn.execute("INSERT INTO t VALUES (?)", (f"bulk-{i}",))
        time.sleep(0.03)  # a long bulk transaction, and the next one begins at once
        conn.commit()
    """
)


def _rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT who FROM t ORDER BY rowid")]


def test_a_bulk_writer_of_another_process_lets_a_waiting_command_in(db: Path) -> None:
    """Without the lock file the command polls in SQLite's busy handler and finds the write lock free
    in none of the gaps between the other process's back-to-back transactions: it waited for the lot."""
    loop = subprocess.Popen([sys.executable, "-c", _BULK_LOOP, str(db), "40"])
    try:
        deadline = time.monotonic() + 20
        while not _rows(db) and time.monotonic() < deadline:  # the other process is writing
            time.sleep(0.01)
        conn = _connect(db)
        conn.execute("INSERT INTO t VALUES ('command')")
        conn.commit()
        conn.close()
        assert loop.wait(30) == 0
    finally:
        loop.kill()
    rows = _rows(db)
    assert len(rows) == 41
    assert rows.index("command") < 10, rows  # in after a few of the 40 bulk transactions, not after all


def test_a_writer_of_another_process_waits_for_this_ones_turn(db: Path) -> None:
    holder = _connect(db)
    holder.execute("INSERT INTO t VALUES ('holder')")  # this process's turn, until commit
    other = subprocess.Popen(
        [sys.executable, "-c", _BULK_LOOP.replace("with bulk_writes():", "if True:"), str(db), "1"],
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.3)
        assert other.poll() is None  # waiting, not refused
        holder.commit()
        assert other.wait(10) == 0, other.stderr.read() if other.stderr else ""
    finally:
        other.kill()
        holder.close()
    assert _rows(db) == ["holder", "bulk-0"]
    assert (db.parent / f"{db.name}-writer.lock").stat().st_mode & 0o077 == 0


def test_a_bulk_transaction_hands_the_lock_to_a_waiting_writer_in_its_middle(db: Path) -> None:
    bulk = _connect(db)
    with bulk_writes():
        bulk.execute("INSERT INTO t VALUES ('bulk-1')")
    assert not bulk.yield_turn()  # nobody waits: the transaction goes on
    assert _rows(db) == []
    done = threading.Event()

    def command() -> None:
        conn = _connect(db)
        conn.execute("INSERT INTO t VALUES ('command')")
        conn.commit()
        conn.close()
        done.set()

    thread = threading.Thread(target=command)
    thread.start()
    _until_a_writer_waits(db)
    assert not done.is_set()  # it waits for the bulk transaction
    assert bulk.yield_turn()
    assert done.wait(10)
    with bulk_writes():
        bulk.execute("INSERT INTO t VALUES ('bulk-2')")
    bulk.rollback()  # takes back the part after the hand-over only
    thread.join(10)
    bulk.close()
    assert _rows(db) == ["bulk-1", "command"]


def test_a_writer_that_handed_its_turn_over_writes_again_only_after_the_waiting_one(db: Path) -> None:
    first = _connect(db)  # not a bulk writer: without the deferral it would take the turn straight back
    first.execute("INSERT INTO t VALUES ('first-1')")
    committing = threading.Event()

    def command() -> None:
        conn = _connect(db)
        conn.execute("INSERT INTO t VALUES ('command')")
        time.sleep(0.2)  # holding the turn: the first writer's next write must wait for this commit
        committing.set()  # before the commit: the first writer may run the moment it gives the turn back
        conn.commit()
        conn.close()

    thread = threading.Thread(target=command)
    thread.start()
    _until_a_writer_waits(db)
    assert first.yield_turn()
    first.execute("INSERT INTO t VALUES ('first-2')")  # waits for the command's turn to end
    assert committing.is_set()
    first.commit()
    thread.join(10)
    first.close()
    assert _rows(db) == ["first-1", "command", "first-2"]


def test_a_bulk_transaction_hands_the_lock_to_a_writer_of_another_process(db: Path) -> None:
    bulk = _connect(db)
    with bulk_writes():
        bulk.execute("INSERT INTO t VALUES ('bulk-1')")
    other = subprocess.Popen(
        [sys.executable, "-c", _BULK_LOOP.replace("with bulk_writes():", "if True:"), str(db), "1"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not bulk.yield_turn():  # true once the other process waits for the write turn
            assert time.monotonic() < deadline, "the other process's writer never showed as waiting"
            time.sleep(0.01)
        assert other.wait(10) == 0, other.stderr.read() if other.stderr else ""
    finally:
        other.kill()
    with bulk_writes():
        bulk.execute("INSERT INTO t VALUES ('bulk-2')")
    bulk.commit()
    bulk.close()
    assert _rows(db) == ["bulk-1", "bulk-0", "bulk-2"]


def test_let_waiting_writers_in_commits_through_sqlalchemy_only_when_one_waits(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'e.sqlite3'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (who TEXT)")
        path = tmp_path / "e.sqlite3"
        with bulk_writes(), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES ('first')")
            assert not let_waiting_writers_in(conn)
            gate = gate_for(str(path.resolve()))
            gate._urgent(+1)  # a writer of this process waiting for the lock, as the gate counts one
            try:
                assert let_waiting_writers_in(conn)
            finally:
                gate._urgent(-1)
            assert _rows(path) == ["first"]  # committed: visible to another connection
            conn.exec_driver_sql("INSERT INTO t VALUES ('second')")
        assert _rows(path) == ["first", "second"]  # the rest committed at the block's end
    finally:
        engine.dispose()
