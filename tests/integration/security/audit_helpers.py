"""Builders for the audit tests: a filled chain, and an attacker who can drop the append-only triggers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from openami.db.tables import audit_log
from openami.security import audit
from openami.security.audit_codec import canonical_entry, entry_hash
from openami.security.audit_keys import EcdsaAuditSigner

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
_TRIGGERS = {
    "sqlite": (
        "audit_log_no_update",
        "audit_log_no_delete",
        "audit_checkpoints_no_update",
        "audit_checkpoints_no_delete",
    ),
    "postgresql": ("audit_log_append_only", "audit_checkpoints_append_only"),
}


def fill(engine: Engine, count: int, *, signer: EcdsaAuditSigner | None = None, every: int = 1000) -> None:
    """``count`` entries, one transaction each, checkpointed every ``every`` entries by ``signer``."""
    audit.configure(signer=signer, checkpoint_every=every)
    try:
        for i in range(count):
            with engine.begin() as conn:
                audit.record(conn, entry(i), now=T0 + timedelta(seconds=i))
    finally:
        audit.configure(signer=None)


def entry(i: int) -> audit.AuditEntry:
    return audit.AuditEntry(
        actor=f"user:u{i % 3}",
        action="readings.read" if i % 2 else "meter.read-now",
        outcome="ok" if i % 5 else "denied",
        resource=f"meter:{i % 4 + 1}",
        subject=f"premise:P{i % 4 + 1:06d}",
        purpose="billing",
        details={"n": i, "ratio": i / 7, "note": 'é\n"quoted"'},
    )


@contextmanager
def attacker(engine: Engine) -> Iterator[Connection]:
    """A connection with the append-only triggers out of the way (someone with DDL rights)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            for table in ("audit_log", "audit_checkpoints"):
                conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        else:
            for name in _TRIGGERS["sqlite"]:
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        yield conn


def row(conn: Connection, seq: int) -> dict[str, object]:
    found = conn.execute(sa.text("SELECT * FROM audit_log WHERE seq = :seq"), {"seq": seq}).one()
    return dict(found._mapping)


def rehash(values: dict[str, object], prev_hash: bytes) -> bytes:
    """What a forger with the canonical encoding computes for ``values`` after ``prev_hash``."""
    fields = tuple(
        values[k] for k in ("seq", "at_us", "actor", "action", "outcome", "resource", "subject", "purpose", "details")
    )
    return entry_hash(prev_hash, canonical_entry(fields))  # type: ignore[arg-type]


def insert_row(conn: Connection, values: dict[str, object]) -> None:
    conn.execute(sa.insert(audit_log), values)


def renumber(conn: Connection, where: str, delta: int, params: dict[str, int]) -> None:
    """Shift sequence numbers in two steps (through negatives) so the primary key never collides."""
    conn.execute(sa.text(f"UPDATE audit_log SET seq = -(seq + :delta) WHERE {where}"), {"delta": delta, **params})
    conn.execute(sa.text("UPDATE audit_log SET seq = -seq WHERE seq < 0"))
