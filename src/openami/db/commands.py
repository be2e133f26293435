"""Switch and limiter commands: rows, transitions that only move from an expected status, queries.

Every status change is one UPDATE guarded by the statuses it may come from (``transition``), so two
workers (or a cancel racing the sender) can never both move the same command; the caller audits the
change in the same transaction. The signed bytes are stored as the meter receives them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from openami.db.tables import meters
from openami.db.tables import switch_commands as sc
from openami.errors import NotFound

__all__ = [
    "CommandRow",
    "due_commands",
    "find_by_idempotency_key",
    "get_command",
    "highest_sent_counter",
    "insert_command",
    "list_commands",
    "open_commands_of",
    "overdue_commands",
    "stale_sent_commands",
    "transition",
]


@dataclass(frozen=True, slots=True)
class CommandRow:
    """One row of ``switch_commands`` (see db/tables.py for what each column means)."""

    id: int
    meter_id: int
    command: str
    threshold_w: int | None
    duration_s: int | None
    emergency: bool | None
    status: str
    counter: int
    execute_at: datetime
    not_after: datetime
    envelope: bytes
    signature: bytes
    request_hash: str
    idempotency_key: str | None
    requested_by: str
    reason: str
    purpose: str | None
    workflow: str | None
    batch_id: int | None
    priority: int
    attempts: int
    next_attempt_at: datetime
    failure_reason: str | None
    refusal: str | None
    created_at: datetime
    queued_at: datetime | None
    sent_at: datetime | None
    confirmed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelled_at: datetime | None
    updated_at: datetime
    output_state: bool | None
    control_state: int | None
    voltage_v: float | None
    current_a: float | None
    load_side_voltage_v: float | None
    active_threshold_w: int | None
    final_import_wh: float | None
    final_export_wh: float | None
    final_read_at: datetime | None


_FIELDS = tuple(f.name for f in fields(CommandRow))


def _row(mapping: Mapping[Any, Any]) -> CommandRow:
    values = {name: mapping[name] for name in _FIELDS}
    values["envelope"] = bytes(values["envelope"])
    values["signature"] = bytes(values["signature"])
    return CommandRow(**values)


def insert_command(conn: Connection, values: Mapping[str, Any]) -> int:
    """Insert one command (all columns but ``id``); returns its id."""
    return int(conn.execute(sa.insert(sc).values(**values).returning(sc.c.id)).scalar_one())


def get_command(conn: Connection, command_id: int, *, visible: ColumnElement[bool] | None = None) -> CommandRow:
    """One command; NotFound when unknown or its meter is outside ``visible`` (a clause on ``meters``)."""
    stmt = sa.select(sc).where(sc.c.id == command_id)
    if visible is not None:
        stmt = stmt.where(sc.c.meter_id.in_(sa.select(meters.c.id).where(visible)))
    row = conn.execute(stmt).mappings().one_or_none()
    if row is None:
        raise NotFound(f"no command {command_id}")
    return _row(row)


def find_by_idempotency_key(conn: Connection, requested_by: str, key: str) -> CommandRow | None:
    stmt = sa.select(sc).where(sc.c.requested_by == requested_by, sc.c.idempotency_key == key)
    row = conn.execute(stmt).mappings().one_or_none()
    return None if row is None else _row(row)


def open_commands_of(conn: Connection, meter_ids: Collection[int], statuses: Collection[str]) -> list[CommandRow]:
    """Commands of ``meter_ids`` in one of ``statuses`` (the conflict check of a submission)."""
    if not meter_ids:
        return []
    stmt = sa.select(sc).where(sc.c.meter_id.in_(sorted(meter_ids)), sc.c.status.in_(sorted(statuses)))
    return [_row(r) for r in conn.execute(stmt.order_by(sc.c.counter)).mappings()]


def list_commands(  # noqa: PLR0913 - one optional keyword per filter the API and CLI offer
    conn: Connection,
    *,
    meter_id: int | None = None,
    status: str | None = None,
    batch_id: int | None = None,
    workflow: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
    visible: ColumnElement[bool] | None = None,
) -> list[CommandRow]:
    """Newest first, keyset-paged by id (``before_id``)."""
    stmt = sa.select(sc)
    for column, value in ((sc.c.meter_id, meter_id), (sc.c.status, status), (sc.c.batch_id, batch_id),
                          (sc.c.workflow, workflow)):  # fmt: skip
        if value is not None:
            stmt = stmt.where(column == value)
    if before_id is not None:
        stmt = stmt.where(sc.c.id < before_id)
    if visible is not None:
        stmt = stmt.where(sc.c.meter_id.in_(sa.select(meters.c.id).where(visible)))
    return [_row(r) for r in conn.execute(stmt.order_by(sc.c.id.desc()).limit(limit)).mappings()]


def due_commands(conn: Connection, *, now: datetime, limit: int) -> list[CommandRow]:
    """Queued commands whose time has come, highest priority first, then in counter order."""
    stmt = (
        sa.select(sc)
        .where(sc.c.status == "queued", sc.c.execute_at <= now, sc.c.next_attempt_at <= now, sc.c.not_after >= now)
        .order_by(sc.c.priority.desc(), sc.c.counter)
        .limit(limit)
    )
    return [_row(r) for r in conn.execute(stmt).mappings()]


def overdue_commands(conn: Connection, *, now: datetime) -> list[CommandRow]:
    """Commands still waiting (queued or awaiting approval) whose validity window has ended."""
    stmt = sa.select(sc).where(sc.c.status.in_(("queued", "awaiting-approval")), sc.c.not_after < now)
    return [_row(r) for r in conn.execute(stmt.order_by(sc.c.id)).mappings()]


def stale_sent_commands(conn: Connection, *, before: datetime) -> list[CommandRow]:
    """Commands "sent" since before ``before``: their sender stopped without recording an outcome."""
    stmt = sa.select(sc).where(sc.c.status == "sent", sc.c.updated_at < before)
    return [_row(r) for r in conn.execute(stmt.order_by(sc.c.id)).mappings()]


def highest_sent_counter(conn: Connection, meter_id: int) -> int | None:
    """The highest counter of a command ever sent to the meter (the meter refuses anything not above it)."""
    sent = sa.or_(sc.c.sent_at.is_not(None), sc.c.status.in_(("sent", "confirmed", "failed")))
    stmt = sa.select(sa.func.max(sc.c.counter)).where(sc.c.meter_id == meter_id, sent)
    value = conn.execute(stmt).scalar_one_or_none()
    return None if value is None else int(value)


def transition(conn: Connection, command_id: int, from_statuses: Collection[str], values: Mapping[str, Any]) -> bool:
    """Set ``values`` (a new ``status`` among them) if the command is in one of ``from_statuses``; False if not."""
    stmt = sa.update(sc).where(sc.c.id == command_id, sc.c.status.in_(sorted(from_statuses))).values(**values)
    return conn.execute(stmt).rowcount == 1
