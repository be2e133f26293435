"""A push batch is stored in parts on SQLite: between parts the write lock goes to a writer that waits
for it (a command, here one of another process), and a batch whose later part failed is stored again
from where its committed parts end, every event stored and counted once, each part with its counters."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from openami.bus import InProcessBus
from openami.db import _sqlite_gate
from openami.db import tables as t
from openami.db.meter_events import EventRow
from openami.db.meters import upsert_meters
from openami.domain.meter_events import EventCode
from openami.headend import events as pipeline_module
from openami.headend.events import EventPipeline, _Batch
from openami.settings import PushSettings
from tests.integration.db.helpers import spec

pytestmark = pytest.mark.parametrize("db_kind", ["sqlite"])  # PostgreSQL's writers lock rows: nothing to hand over

_WAITING_WRITER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_SH, 1, 1)  # what a process with a command waiting for the write lock holds
    print("waiting", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def writer_waiting_elsewhere(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Another process shows a writer waiting for the whole test: every part hands the lock over."""
    monkeypatch.setattr(_sqlite_gate, "BULK_PATIENCE_S", 0.01)  # and does not wait long to take it back
    database = Path(str(engine.url.database)).resolve()
    other = subprocess.Popen(
        [sys.executable, "-c", _WAITING_WRITER, f"{database}-writer.lock"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == b"waiting\n"
        yield
    finally:
        other.kill()
        other.wait(10)


def _meters(engine: Engine, count: int) -> list[int]:
    with engine.begin() as conn:
        ids = upsert_meters(conn, [spec(n) for n in range(1, count + 1)], now=datetime.now(UTC) - timedelta(days=1))
    return [ids[spec(n).serial] for n in range(1, count + 1)]


def _batch(meters: list[int], events: int) -> _Batch:
    at = int(datetime.now(UTC).timestamp()) - 3600
    rows = [EventRow(meters[i % len(meters)], int(EventCode.POWER_DOWN), at + i, at + i + 1.0, "push", None)
            for i in range(events)]  # fmt: skip
    counters = {(meters[i % len(meters)], 0): i + 1 for i in range(events)}
    return _Batch(rows=rows, counters=counters)


def _stored(engine: Engine) -> tuple[int, dict[int, int]]:
    with engine.connect() as conn:
        events = conn.execute(sa.select(sa.func.count()).select_from(t.meter_events)).scalar_one()
        p = t.push_counters.c
        counters = {int(m): int(c) for m, c in conn.execute(sa.select(p.meter_id, p.last_counter))}
    return int(events), counters


def test_a_batch_stored_while_a_writer_waits_is_committed_part_by_part(
    engine: Engine, writer_waiting_elsewhere: None
) -> None:
    meters = _meters(engine, 7)
    pipeline = EventPipeline(engine, InProcessBus(), dict, PushSettings())
    batch = _batch(meters, 250)
    outcome = pipeline._store(batch)
    assert len(outcome.stored) == 250
    assert outcome.duplicates == 0
    assert [row.meter_time for row in outcome.stored] == [row.meter_time for row in batch.rows]
    assert batch.committed == 250  # every part handed over (the last one too)
    events, counters = _stored(engine)
    assert events == 250
    assert counters == {m: max(v for (meter, _), v in batch.counters.items() if meter == m) for m in meters}


def test_a_batch_whose_later_part_failed_is_stored_again_from_its_first_uncommitted_part(
    engine: Engine, writer_waiting_elsewhere: None
) -> None:
    meters = _meters(engine, 7)
    pipeline = EventPipeline(engine, InProcessBus(), dict, PushSettings())
    batch = _batch(meters, 250)
    failing = batch.rows[150].meter_time
    with engine.begin() as conn:  # the database refuses one event of the second part, once
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON meter_events "
            f"WHEN NEW.meter_time = {failing:d} BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    with pytest.raises(IntegrityError, match="injected failure"):
        pipeline._store(batch)
    assert batch.committed == pipeline_module._ROWS_PER_TURN  # the first part stands, with its counters
    events, counters = _stored(engine)
    assert events == pipeline_module._ROWS_PER_TURN
    assert set(counters) == {row.meter_id for row in batch.rows[: pipeline_module._ROWS_PER_TURN]}
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse_one")
    outcome = pipeline._store(batch)  # the pipeline's retry
    assert len(outcome.stored) == 250  # the committed part's events too: published once, none twice
    assert len({row.key for row in outcome.stored}) == 250
    assert outcome.duplicates == 0
    assert _stored(engine)[0] == 250
