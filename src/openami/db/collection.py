"""Collection-run bookkeeping: one row per collection window with expected / received / failed meters."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db.tables import collection_runs as cr
from openami.errors import NotFound

__all__ = ["CollectionRun", "finish_run", "get_run", "latest_run", "list_runs", "record_progress", "start_run"]


class CollectionRun(NamedTuple):
    id: int
    kind: str
    window_start: datetime
    window_end: datetime
    started_at: datetime
    finished_at: datetime | None
    expected: int
    received: int
    failed: int

    @property
    def pending(self) -> int:
        return max(0, self.expected - self.received - self.failed)


_COLUMNS = (
    cr.c.id, cr.c.kind, cr.c.window_start, cr.c.window_end, cr.c.started_at, cr.c.finished_at,
    cr.c.expected, cr.c.received, cr.c.failed,
)  # fmt: skip


def start_run(
    conn: Connection,
    *,
    window_start: datetime,
    window_end: datetime,
    expected: int,
    started_at: datetime,
    kind: str = "scheduled",
) -> int:
    """Open a run for a collection window; returns its id."""
    stmt = (
        sa.insert(cr)
        .values(
            kind=kind,
            window_start=window_start,
            window_end=window_end,
            started_at=started_at,
            expected=expected,
            received=0,
            failed=0,
        )
        .returning(cr.c.id)
    )
    return int(conn.execute(stmt).scalar_one())


def record_progress(conn: Connection, run_id: int, *, received: int = 0, failed: int = 0) -> None:
    """Add to a run's received / failed meter counts (atomic increments: safe from many workers)."""
    stmt = sa.update(cr).where(cr.c.id == run_id).values(received=cr.c.received + received, failed=cr.c.failed + failed)
    if conn.execute(stmt).rowcount != 1:
        raise NotFound(f"collection run {run_id} does not exist")


def finish_run(conn: Connection, run_id: int, *, finished_at: datetime) -> None:
    if conn.execute(sa.update(cr).where(cr.c.id == run_id).values(finished_at=finished_at)).rowcount != 1:
        raise NotFound(f"collection run {run_id} does not exist")


def get_run(conn: Connection, run_id: int) -> CollectionRun:
    row = conn.execute(sa.select(*_COLUMNS).where(cr.c.id == run_id)).one_or_none()
    if row is None:
        raise NotFound(f"collection run {run_id} does not exist")
    return CollectionRun(*row)


def latest_run(conn: Connection, *, kind: str | None = None) -> CollectionRun | None:
    runs = list_runs(conn, kind=kind, limit=1)
    return runs[0] if runs else None


def list_runs(
    conn: Connection, *, kind: str | None = None, before_id: int | None = None, limit: int = 50
) -> list[CollectionRun]:
    """Newest first; page with ``before_id`` = the last id of the previous page."""
    query = sa.select(*_COLUMNS)
    if kind is not None:
        query = query.where(cr.c.kind == kind)
    if before_id is not None:
        query = query.where(cr.c.id < before_id)
    return [CollectionRun(*row) for row in conn.execute(query.order_by(cr.c.id.desc()).limit(limit))]
