"""Webhook endpoints (their signing secret wrapped under the master key) and the delivery outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import tables as t
from openami.db._upsert import insert_on_conflict
from openami.errors import NotFound

__all__ = [
    "Change",
    "Delivery",
    "Webhook",
    "active_webhooks",
    "add_webhook",
    "deliveries",
    "due_deliveries",
    "enqueue",
    "get_webhook",
    "list_webhooks",
    "next_due",
    "record_attempt",
    "remove_webhook",
    "set_secret",
    "wrapped_secret",
]

w, d = t.webhooks, t.webhook_deliveries


@dataclass(frozen=True, slots=True)
class Webhook:
    id: int
    name: str
    url: str
    created_by: str
    created_at: datetime
    removed_at: datetime | None


class Change(NamedTuple):
    """One outage change to deliver: the outage, its version, the JSON body."""

    outage_id: int
    version: int
    payload: str


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: int
    outage_id: int
    outage_version: int
    payload: str
    state: str  # pending, delivered, failed
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


_WEBHOOK = (w.c.id, w.c.name, w.c.url, w.c.created_by, w.c.created_at, w.c.removed_at)
_DELIVERY = (
    d.c.id, d.c.webhook_id, d.c.outage_id, d.c.outage_version, d.c.payload, d.c.state, d.c.attempts,
    d.c.next_attempt_at, d.c.last_status, d.c.last_error, d.c.delivered_at,
)  # fmt: skip


def add_webhook(conn: Connection, *, name: str, url: str, created_by: str, now: datetime) -> int:
    """A new endpoint with an empty secret: the caller wraps the secret (bound to this id) and sets it."""
    query = sa.insert(w).values(
        name=name, url=url, kek_id="", secret_wrapped=b"", created_by=created_by, created_at=now
    )  # fmt: skip
    return int(conn.execute(query.returning(w.c.id)).scalar_one())


def set_secret(conn: Connection, webhook_id: int, *, kek_id: str, wrapped: bytes) -> None:
    conn.execute(sa.update(w).where(w.c.id == webhook_id).values(kek_id=kek_id, secret_wrapped=wrapped))


def wrapped_secret(conn: Connection, webhook_id: int) -> bytes:
    found = conn.execute(sa.select(w.c.secret_wrapped).where(w.c.id == webhook_id)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    return bytes(found)


def get_webhook(conn: Connection, webhook_id: int) -> Webhook:
    row = conn.execute(sa.select(*_WEBHOOK).where(w.c.id == webhook_id)).one_or_none()
    if row is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    return Webhook(*row)


def list_webhooks(conn: Connection, *, include_removed: bool = False) -> list[Webhook]:
    query = sa.select(*_WEBHOOK)
    if not include_removed:
        query = query.where(w.c.removed_at.is_(None))
    return [Webhook(*row) for row in conn.execute(query.order_by(w.c.id))]


def active_webhooks(conn: Connection) -> list[Webhook]:
    return list_webhooks(conn)


def remove_webhook(conn: Connection, webhook_id: int, *, now: datetime) -> None:
    """Stop notifying it (kept for the delivery records); its pending deliveries are dropped as failed."""
    done = conn.execute(sa.update(w).where(w.c.id == webhook_id, w.c.removed_at.is_(None)).values(removed_at=now))
    if done.rowcount == 0:
        raise NotFound(f"webhook {webhook_id} does not exist or was removed")
    query = sa.update(d).where(d.c.webhook_id == webhook_id, d.c.state == "pending")
    conn.execute(query.values(state="failed", last_error="endpoint removed"))


def enqueue(conn: Connection, webhook_ids: Sequence[int], changes: Sequence[Change], *, now: datetime) -> int:
    """One pending delivery per endpoint for each outage change (a repeated change adds nothing)."""
    rows = [
        {"webhook_id": i, "outage_id": change.outage_id, "outage_version": change.version, "payload": change.payload,
         "state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
        for change in changes
        for i in webhook_ids
    ]  # fmt: skip
    return insert_on_conflict(conn, d, rows, key=("webhook_id", "outage_id", "outage_version"))


def due_deliveries(conn: Connection, *, now: datetime, limit: int = 100) -> list[Delivery]:
    query = sa.select(*_DELIVERY).where(d.c.state == "pending", d.c.next_attempt_at <= now)
    return [Delivery(*row) for row in conn.execute(query.order_by(d.c.next_attempt_at, d.c.id).limit(limit))]


def next_due(conn: Connection) -> datetime | None:
    query = sa.select(sa.func.min(d.c.next_attempt_at)).where(d.c.state == "pending")
    found: datetime | None = conn.execute(query).scalar_one_or_none()  # min() keeps the column's UTC type
    return found


def record_attempt(
    conn: Connection,
    delivery_id: int,
    *,
    state: str,
    status: int | None,
    error: str | None,
    next_attempt_at: datetime,
    now: datetime,
) -> None:
    values = {
        "state": state, "attempts": d.c.attempts + 1, "last_status": status,
        "last_error": None if error is None else error[:255], "next_attempt_at": next_attempt_at,
        "delivered_at": now if state == "delivered" else None,
    }  # fmt: skip
    conn.execute(sa.update(d).where(d.c.id == delivery_id).values(**values))


def deliveries(conn: Connection, webhook_id: int, *, limit: int = 100) -> list[Delivery]:
    query = sa.select(*_DELIVERY).where(d.c.webhook_id == webhook_id).order_by(d.c.id.desc()).limit(limit)
    return [Delivery(*row) for row in conn.execute(query)]
