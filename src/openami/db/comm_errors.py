"""Communication errors: which meter, which step of the exchange failed, and why."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db.tables import communication_errors as ce

__all__ = ["CommErrorRecord", "count_comm_errors", "list_comm_errors", "record_comm_error"]

_CAUSE_MAX = 2000


class CommErrorRecord(NamedTuple):
    id: int
    meter_id: int
    run_id: int | None
    step: str
    cause: str
    occurred_at: datetime


def record_comm_error(
    conn: Connection, meter_id: int, step: str, cause: str, *, occurred_at: datetime, run_id: int | None = None
) -> int:
    """Store one failure (``step`` e.g. "connect", "associate", "get-profile"); returns its id.

    ``cause`` is for operators; it must never hold keys or decrypted content (callers pass the
    error's message, which the error tree keeps free of them). Long causes are truncated.
    """
    stmt = (
        sa.insert(ce)
        .values(meter_id=meter_id, run_id=run_id, step=step[:64], cause=cause[:_CAUSE_MAX], occurred_at=occurred_at)
        .returning(ce.c.id)
    )
    return int(conn.execute(stmt).scalar_one())


def list_comm_errors(
    conn: Connection,
    *,
    meter_id: int | None = None,
    run_id: int | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[CommErrorRecord]:
    """Newest first; page with ``before_id`` = the last id of the previous page."""
    query = sa.select(ce.c.id, ce.c.meter_id, ce.c.run_id, ce.c.step, ce.c.cause, ce.c.occurred_at)
    if meter_id is not None:
        query = query.where(ce.c.meter_id == meter_id)
    if run_id is not None:
        query = query.where(ce.c.run_id == run_id)
    if since is not None:
        query = query.where(ce.c.occurred_at >= since)
    if before_id is not None:
        query = query.where(ce.c.id < before_id)
    query = query.order_by(ce.c.id.desc()).limit(limit)
    return [CommErrorRecord(*row) for row in conn.execute(query)]


def count_comm_errors(conn: Connection, *, run_id: int | None = None, since: datetime | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(ce)
    if run_id is not None:
        query = query.where(ce.c.run_id == run_id)
    if since is not None:
        query = query.where(ce.c.occurred_at >= since)
    return int(conn.execute(query).scalar_one())
