"""Append-only, hash-chained audit log with signed checkpoints (docs/security.md "Audit log").

``record`` appends one entry in the CALLER's transaction, so it commits or rolls back with the
action it records: a rolled-back entry leaves neither a trace nor a gap in the sequence. Appenders
first bump the one-row ``audit_chain_head`` (``UPDATE ... RETURNING``): on PostgreSQL the row lock
serialises them until the caller commits; on SQLite that first write takes the database write lock
(pysqlite opens the transaction right before it, see ``openami.db.engine``), so the head is always
read inside the writing transaction and the chain can never fork. Record late in a transaction:
the head stays locked until commit.

Every ``checkpoint_every`` entries, when a signer is configured (``configure``), the chain's
(sequence, hash) is signed with the audit key and stored in ``audit_checkpoints`` in the same
transaction; ``checkpoint`` signs the current head on demand. ``verify`` (in ``audit_verify``,
re-exported here) recomputes the chain and checks the signatures.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from openami.db.tables import audit_chain_head, audit_checkpoints, audit_log
from openami.security.audit_codec import (
    GENESIS_HASH,
    OUTCOMES,
    canonical_details,
    canonical_entry,
    check_text,
    checkpoint_message,
    entry_hash,
)
from openami.security.audit_keys import AuditSigner
from openami.security.audit_verify import VerifyResult, verify

__all__ = [
    "AuditChainError",
    "AuditEntry",
    "AuditRecord",
    "Checkpoint",
    "VerifyResult",
    "chain_head",
    "checkpoint",
    "configure",
    "latest_checkpoint",
    "query",
    "record",
    "to_epoch_us",
    "verify",
]

DEFAULT_CHECKPOINT_EVERY = 1000
_ACTION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")

_BUMP_HEAD = sa.text("UPDATE audit_chain_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
_CREATE_HEAD = sa.text(
    "INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING"
)
_COLUMNS = "seq, at_us, actor, action, outcome, resource, subject, purpose, details, prev_hash, hash"


@dataclass(frozen=True, slots=True)
class _Sql:
    """The append's statements in the driver's own parameter style: ``record`` runs them on the DBAPI
    cursor of the caller's connection (same transaction), skipping Core's per-statement cost.
    ``append`` takes the 11 column values and leaves the new hash in the head row: one statement
    (one round trip) on PostgreSQL, two on SQLite (no INSERT inside WITH). ``append_if_head``
    (PostgreSQL) is the whole append in ONE round trip when the writer already knows the head (its
    own last append): it moves the head only if the head is still exactly that entry, and inserts
    only if it moved it."""

    bump: str
    append: tuple[str, ...]
    append_if_head: str | None = None


_BUMP = "UPDATE audit_chain_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash"
_SQL = {
    "sqlite": _Sql(
        _BUMP,
        (
            f"INSERT INTO audit_log ({_COLUMNS}) VALUES ({', '.join(['?'] * 11)})",  # noqa: S608 - constants
            "UPDATE audit_chain_head SET hash = ?11 WHERE id = 1",  # ?11: the same parameters, the new hash
        ),
    ),
    "postgresql": _Sql(
        _BUMP,
        (
            f"WITH appended AS (INSERT INTO audit_log ({_COLUMNS}) VALUES ({', '.join(['%s'] * 11)}) RETURNING hash) "  # noqa: S608
            "UPDATE audit_chain_head SET hash = (SELECT hash FROM appended) WHERE id = 1",
        ),
        (
            "WITH moved AS (UPDATE audit_chain_head SET seq = %s, hash = %s WHERE id = 1 AND seq = %s AND hash = %s "  # noqa: S608
            f"RETURNING seq) INSERT INTO audit_log ({_COLUMNS}) SELECT {', '.join(['%s'] * 11)} FROM moved"
        ),
    ),
}
_last_appended: weakref.WeakKeyDictionary[Engine, tuple[int, bytes]] = weakref.WeakKeyDictionary()
"""Per database (engine): the (seq, hash) this process appended last; a stale value costs one retry."""
_INSERT_CHECKPOINT = sa.text(
    "INSERT INTO audit_checkpoints (seq, hash, signed_at_us, key_id, signature) "
    "VALUES (:seq, :hash, :signed_at_us, :key_id, :signature) ON CONFLICT (seq) DO NOTHING"
)


class AuditChainError(RuntimeError):
    """The chain's bookkeeping is broken (e.g. its head row is gone): nothing more is appended."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited fact: who did what to which resource, with what outcome. Never carries secrets."""

    actor: str  # "user:alice", "token:ops-1", "client:cis", "system:scheduler", "cli:local-admin"
    action: str  # dotted, from the policy's action list: "readings.read", "meter.read-now", "auth.login"
    outcome: str  # "ok" | "denied" | "failed"
    resource: str | None = None  # "meter:42", "token:7", "certificate:1F3A..."
    subject: str | None = None  # whose personal data: "premise:P000123"
    purpose: str | None = None  # declared purpose: "billing", "outage", "operations" ...
    # never keys, passwords, tokens: a details key that names one is refused
    details: Mapping[str, str | int | float | bool | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored entry as read back."""

    seq: int
    at: datetime
    actor: str
    action: str
    outcome: str
    resource: str | None
    subject: str | None
    purpose: str | None
    details: dict[str, Any]
    hash: str  # hex


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: bytes
    signed_at: datetime
    key_id: str


@dataclass(slots=True)
class _Policy:
    signer: AuditSigner | None = None
    every: int = DEFAULT_CHECKPOINT_EVERY


_policy = _Policy()
_policy_lock = threading.Lock()


def configure(*, signer: AuditSigner | None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> None:
    """Set the process-wide checkpoint signer (None: no automatic checkpoints) and interval.

    Called once where the program starts (platform, CLI, benchmark), like logging configuration.
    """
    if checkpoint_every < 1:
        raise ValueError("checkpoint_every must be at least 1")
    with _policy_lock:
        _policy.signer = signer
        _policy.every = checkpoint_every


def to_epoch_us(moment: datetime) -> int:
    """Aware datetime -> integer epoch microseconds UTC (exact); a naive datetime is a ValueError."""
    if moment.utcoffset() is None:
        raise ValueError("audit times must be timezone-aware")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _validated(entry: AuditEntry) -> str:
    check_text(entry.actor, "actor", max_length=128, required=True)
    check_text(entry.action, "action", max_length=64, required=True)
    if not set(entry.action) <= _ACTION_CHARS:
        raise ValueError(f"audit action {entry.action!r} must be dotted lower-case words")
    if entry.outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {sorted(OUTCOMES)}, not {entry.outcome!r}")
    check_text(entry.resource, "resource", max_length=128)
    check_text(entry.subject, "subject", max_length=128)
    check_text(entry.purpose, "purpose", max_length=64)
    return canonical_details(entry.details)


def record(conn: Connection, entry: AuditEntry, *, now: datetime) -> int:
    """Append in the CALLER's transaction (so it commits or rolls back with the action); returns the sequence number.

    Raises ValueError for an invalid entry (unknown outcome, control characters, a details key that
    names a secret such as ``password``, ``token``, ``key``, ``guek``, ``gak``); nothing is written then.
    """
    details = _validated(entry)
    at_us = to_epoch_us(now)
    sql = _SQL[conn.dialect.name]
    if not conn.in_transaction():
        conn.begin()  # what conn.execute would do (autobegin): the caller's commit or rollback decides
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        values: tuple[Any, ...] | None = None
        head = _last_appended.get(conn.engine) if sql.append_if_head is not None else None
        if head is not None:
            values = _values(head, entry, details, at_us)
            if not _append_after(cursor, sql, head, values):
                values = None
        if values is None:
            cursor.execute(sql.bump)
            row = cursor.fetchone()
            if row is None:
                row = _create_head(conn)
            values = _values((int(row[0]) - 1, bytes(row[1])), entry, details, at_us)
            for statement in sql.append:
                cursor.execute(statement, values)
    finally:
        cursor.close()
    seq, digest = int(values[0]), bytes(values[-1])
    if sql.append_if_head is not None:
        _last_appended[conn.engine] = (seq, digest)
    signer, every = _policy.signer, _policy.every
    if signer is not None and seq % every == 0:
        _write_checkpoint(conn, signer, seq, digest, at_us)
    return seq


def _values(head: tuple[int, bytes], entry: AuditEntry, details: str, at_us: int) -> tuple[Any, ...]:
    """The 11 column values of the entry that follows ``head`` (its seq and hash)."""
    seq = head[0] + 1
    fields = (seq, at_us, entry.actor, entry.action, entry.outcome, entry.resource, entry.subject, entry.purpose,
              details)  # fmt: skip
    return (*fields, head[1], entry_hash(head[1], canonical_entry(fields)))


def _append_after(cursor: Any, sql: _Sql, head: tuple[int, bytes], values: tuple[Any, ...]) -> bool:
    """Append ``values`` in one round trip if ``head`` is still the chain's head; False (nothing
    written) if not. The UPDATE locks the head row, so a concurrent appender either went first (this
    one then finds another head, writes nothing and takes the locking path) or waits for this one."""
    cursor.execute(sql.append_if_head, (values[0], values[-1], head[0], head[1], *values))
    return bool(cursor.rowcount == 1)


def _create_head(conn: Connection) -> Sequence[Any]:
    """The head row is made by the migration; recreate it only for a chain that is still empty."""
    if conn.execute(sa.select(audit_log.c.seq).limit(1)).first() is not None:
        raise AuditChainError("the audit chain head is missing while entries exist: refusing to append")
    conn.execute(_CREATE_HEAD, {"genesis": GENESIS_HASH})
    return conn.execute(_BUMP_HEAD).one()


def _write_checkpoint(conn: Connection, signer: AuditSigner, seq: int, digest: bytes, at_us: int) -> None:
    signature = signer.sign(checkpoint_message(seq, digest, at_us))
    conn.execute(
        _INSERT_CHECKPOINT,
        {"seq": seq, "hash": digest, "signed_at_us": at_us, "key_id": signer.key_id, "signature": signature},
    )


def chain_head(conn: Connection) -> tuple[int, bytes]:
    """(newest sequence number, its hash); (0, 32 zero bytes) for an empty chain."""
    row = conn.execute(sa.select(audit_chain_head.c.seq, audit_chain_head.c.hash).where(audit_chain_head.c.id == 1))
    found = row.one_or_none()
    return (0, GENESIS_HASH) if found is None else (int(found[0]), bytes(found[1]))


def checkpoint(conn: Connection, signer: AuditSigner, *, now: datetime) -> Checkpoint | None:
    """Sign the chain's current head now (on demand); None for an empty chain.

    Idempotent per sequence number: a head already checkpointed keeps its first signature.
    """
    seq, digest = chain_head(conn)
    if seq == 0:
        return None
    _write_checkpoint(conn, signer, seq, digest, to_epoch_us(now))
    return latest_checkpoint(conn)


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    cp = audit_checkpoints.c
    row = conn.execute(
        sa.select(cp.seq, cp.hash, cp.signed_at_us, cp.key_id).order_by(cp.seq.desc()).limit(1)
    ).one_or_none()
    if row is None:
        return None
    return Checkpoint(int(row[0]), bytes(row[1]), _from_us(int(row[2])), str(row[3]))


def _from_us(at_us: int) -> datetime:
    return datetime.fromtimestamp(at_us // 1_000_000, UTC).replace(microsecond=at_us % 1_000_000)


def query(  # noqa: PLR0913 - one optional keyword per filter the CLI and API offer
    conn: Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    resource: str | None = None,
    subject: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_seq: int | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """Entries matching every given filter, newest first; page with ``before_seq`` = the last seq seen.

    ``resource="meter:42"`` finds a meter's entries. Times are inclusive bounds.
    """
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be between 1 and 10000")
    log = audit_log.c
    stmt = sa.select(
        log.seq, log.at_us, log.actor, log.action, log.outcome, log.resource, log.subject, log.purpose, log.details,
        log.hash,
    )  # fmt: skip
    for column, value in ((log.actor, actor), (log.action, action), (log.outcome, outcome),
                          (log.resource, resource), (log.subject, subject)):  # fmt: skip
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(log.at_us >= to_epoch_us(since))
    if until is not None:
        stmt = stmt.where(log.at_us <= to_epoch_us(until))
    if before_seq is not None:
        stmt = stmt.where(log.seq < before_seq)
    rows = conn.execute(stmt.order_by(log.seq.desc()).limit(limit)).all()
    return [
        AuditRecord(
            seq=int(r[0]),
            at=_from_us(int(r[1])),
            actor=r[2],
            action=r[3],
            outcome=r[4],
            resource=r[5],
            subject=r[6],
            purpose=r[7],
            details=json.loads(r[8]),
            hash=bytes(r[9]).hex(),
        )
        for r in rows
    ]
