"""Switch and limiter commands: rows, transitions that only move from an expected status, queries.

Every status change is one UPDATE guarded by the statuses it may come from (``transition``), so two
workers (or a cancel racing the sender) can never both move the same command; the caller audits the
change in the same transaction. The signed bytes are stored as the meter receives them.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
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
    "due_commands_with_highest_sent",
    "find_by_idempotency_key",
    "get_command",
    "highest_sent_counter",
    "insert_command",
    "insert_command_row",
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


# The hot statements (every command runs each of them once or more) are built once, with bound
# parameters: building a statement and its cache key anew costs more CPU than SQLite takes to run it.
_COLUMNS = tuple(sc.c[name] for name in _FIELDS)  # a row comes back in CommandRow's field order
_ENVELOPE, _SIGNATURE = _FIELDS.index("envelope"), _FIELDS.index("signature")
_INSERT = sa.insert(sc).returning(sc.c.id, sc.c.attempts)  # what the database fills in
_BY_ID = sa.select(*_COLUMNS).where(sc.c.id == sa.bindparam("command_id"))


def _one_of(column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN values`` as equalities: an IN list is rendered again at every execution (about as much
    CPU as SQLite takes to run the statement); equalities are compiled once with the statement."""
    return sa.or_(*(column == value for value in values))


@functools.cache
def _transition_from(statuses: tuple[str, ...]) -> sa.Update:
    return sa.update(sc).where(sc.c.id == sa.bindparam("where_id"), _one_of(sc.c.status, statuses)).returning(*_COLUMNS)


@functools.cache
def _open_of_one(statuses: tuple[str, ...]) -> sa.Select[Any]:
    """``_OPEN_OF`` for one meter (a submission's conflict check)."""
    return (
        sa.select(*_COLUMNS)
        .where(sc.c.meter_id == sa.bindparam("meter_id"), _one_of(sc.c.status, statuses))
        .order_by(sc.c.counter)
    )


_OPEN_OF = (
    sa.select(*_COLUMNS)
    .where(sc.c.meter_id.in_(sa.bindparam("meter_ids", expanding=True)),
           sc.c.status.in_(sa.bindparam("statuses", expanding=True)))
    .order_by(sc.c.counter)
)  # fmt: skip

_IN_FLIGHT = sa.alias(sc, "in_flight")
_DUE = (
    sa.select(*_COLUMNS)
    .where(sc.c.status == "queued", sc.c.execute_at <= sa.bindparam("now"), sc.c.next_attempt_at <= sa.bindparam("now"),
           sc.c.not_after >= sa.bindparam("now"),
           # one command at a time per meter, whichever process sent the one on its way (index meter_id, status)
           ~sa.exists().where(_IN_FLIGHT.c.meter_id == sc.c.meter_id, _IN_FLIGHT.c.status == "sent"))
    .order_by(sc.c.priority.desc(), sc.c.counter)
    .limit(sa.bindparam("limit"))
)  # fmt: skip
_OVERDUE = (
    sa.select(*_COLUMNS)
    .where(sc.c.status.in_(("queued", "awaiting-approval")), sc.c.not_after < sa.bindparam("now"))
    .order_by(sc.c.id)
)
_STALE_SENT = (
    sa.select(*_COLUMNS).where(sc.c.status == "sent", sc.c.updated_at < sa.bindparam("before")).order_by(sc.c.id)
)
_WAS_SENT = ("sent", "confirmed", "failed")
_HIGHEST_SENT = sa.select(sa.func.max(sc.c.counter)).where(
    sc.c.meter_id == sa.bindparam("meter_id"), sa.or_(sc.c.sent_at.is_not(None), _one_of(sc.c.status, _WAS_SENT))
)
_DUE_ROWS = _DUE.subquery("due")
_SENT_BEFORE = sa.alias(sc, "sent_before")
_DUE_WITH_HIGHEST_SENT = sa.select(
    *(_DUE_ROWS.c[name] for name in _FIELDS),
    sa.select(sa.func.max(_SENT_BEFORE.c.counter))
    .where(
        _SENT_BEFORE.c.meter_id == _DUE_ROWS.c.meter_id,
        sa.or_(_SENT_BEFORE.c.sent_at.is_not(None), _one_of(_SENT_BEFORE.c.status, _WAS_SENT)),
    )
    .scalar_subquery(),
).order_by(_DUE_ROWS.c.priority.desc(), _DUE_ROWS.c.counter)
"""``_DUE`` and, per row, what ``_HIGHEST_SENT`` says for its meter: the claim needs both, and one statement
costs less than one for the due commands and one per command claimed (the subquery runs on the rows
the limit kept, not on every due command)."""


def _from_tuple(row: Sequence[Any]) -> CommandRow:
    """A row selected as ``_COLUMNS`` (positional: no mapping built per row)."""
    values = list(row)
    values[_ENVELOPE] = bytes(values[_ENVELOPE])
    values[_SIGNATURE] = bytes(values[_SIGNATURE])
    return CommandRow(*values)


def insert_command(conn: Connection, values: Mapping[str, Any]) -> int:
    """Insert one command (all columns but ``id``); returns its id."""
    return insert_command_row(conn, values).id


def insert_command_row(conn: Connection, values: Mapping[str, Any]) -> CommandRow:
    """Insert one command and return it as stored, in one statement: no read after. RETURNING brings only
    what the database filled in (the id, the default of ``attempts``); the rest is what was written (times
    in UTC, as they read back) and NULL for every column not given: reading the 41 columns back cost
    as much CPU as the insert itself."""
    new_id, attempts = conn.execute(_INSERT, dict(values)).one()
    stored = dict.fromkeys(_FIELDS) | {
        name: value.astimezone(UTC) if isinstance(value, datetime) else value for name, value in values.items()
    }
    stored |= {"id": int(new_id), "attempts": int(attempts)}
    return _from_tuple([stored[name] for name in _FIELDS])


def get_command(conn: Connection, command_id: int, *, visible: ColumnElement[bool] | None = None) -> CommandRow:
    """One command; NotFound when unknown or its meter is outside ``visible`` (a clause on ``meters``)."""
    stmt = _BY_ID
    if visible is not None:
        stmt = stmt.where(sc.c.meter_id.in_(sa.select(meters.c.id).where(visible)))
    row = conn.execute(stmt, {"command_id": command_id}).one_or_none()
    if row is None:
        raise NotFound(f"no command {command_id}")
    return _from_tuple(row)


def find_by_idempotency_key(conn: Connection, requested_by: str, key: str) -> CommandRow | None:
    stmt = sa.select(sc).where(sc.c.requested_by == requested_by, sc.c.idempotency_key == key)
    row = conn.execute(stmt).mappings().one_or_none()
    return None if row is None else _row(row)


def open_commands_of(conn: Connection, meter_ids: Collection[int], statuses: Collection[str]) -> list[CommandRow]:
    """Commands of ``meter_ids`` in one of ``statuses`` (the conflict check of a submission)."""
    if not meter_ids:
        return []
    if len(meter_ids) == 1:
        (meter_id,) = meter_ids
        return [_from_tuple(r) for r in conn.execute(_open_of_one(tuple(sorted(statuses))), {"meter_id": meter_id})]
    params = {"meter_ids": sorted(meter_ids), "statuses": sorted(statuses)}
    return [_from_tuple(r) for r in conn.execute(_OPEN_OF, params)]


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
    return [_from_tuple(r) for r in conn.execute(_DUE, {"now": now, "limit": limit})]


def due_commands_with_highest_sent(
    conn: Connection, *, now: datetime, limit: int
) -> list[tuple[CommandRow, int | None]]:
    """``due_commands``, each with ``highest_sent_counter`` of its meter (None: nothing sent to it yet)."""
    return [
        (_from_tuple(r[:-1]), None if r[-1] is None else int(r[-1]))
        for r in conn.execute(_DUE_WITH_HIGHEST_SENT, {"now": now, "limit": limit})
    ]


def overdue_commands(conn: Connection, *, now: datetime) -> list[CommandRow]:
    """Commands still waiting (queued or awaiting approval) whose validity window has ended."""
    return [_from_tuple(r) for r in conn.execute(_OVERDUE, {"now": now})]


def stale_sent_commands(conn: Connection, *, before: datetime) -> list[CommandRow]:
    """Commands "sent" since before ``before``: their sender stopped without recording an outcome."""
    return [_from_tuple(r) for r in conn.execute(_STALE_SENT, {"before": before})]


def highest_sent_counter(conn: Connection, meter_id: int) -> int | None:
    """The highest counter of a command ever sent to the meter (the meter refuses anything not above it)."""
    value = conn.execute(_HIGHEST_SENT, {"meter_id": meter_id}).scalar_one_or_none()
    return None if value is None else int(value)


def transition(
    conn: Connection, command_id: int, from_statuses: Collection[str], values: Mapping[str, Any]
) -> CommandRow | None:
    """Set ``values`` (a new ``status`` among them) if the command is in one of ``from_statuses``.

    Returns the command as it is after the change (RETURNING: the caller needs no read after it), or
    None when it was in another status (another worker moved it first: nothing was written).
    """
    params = {**values, "where_id": command_id}  # SET: the other keys
    row = conn.execute(_transition_from(tuple(sorted(from_statuses))), params).one_or_none()
    return None if row is None else _from_tuple(row)
