"""API bearer tokens: 256-bit random, shown once, stored only as a SHA-256 hash.

A token looks like ``oam_<43 url-safe base64 chars>``; the prefix makes leaked tokens easy to scan
for. SHA-256 (not a slow password hash) is right for 256-bit random secrets: there is nothing to
brute-force. Verification looks the hash up and compares it again in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db.tables import api_tokens as tok
from openami.errors import InvalidInput, NotFound

__all__ = ["TOKEN_PREFIX", "TokenInfo", "create_token", "list_tokens", "revoke_token", "verify_token"]

TOKEN_PREFIX = "oam_"  # noqa: S105 - a public marker, not a secret
_TOKEN_BYTES = 32


class TokenInfo(NamedTuple):
    """What a verified token grants; never carries the token or its hash."""

    id: int
    name: str
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    conn: Connection, name: str, scopes: Iterable[str], *, now: datetime, expires_at: datetime | None = None
) -> tuple[int, str]:
    """Create a token; returns (id, token). The token is not stored and cannot be shown again."""
    scope_list = sorted(set(scopes))
    if any(not s or any(ch.isspace() for ch in s) for s in scope_list):
        raise InvalidInput("scopes must be non-empty words without spaces")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("a token must expire after it is created")
    token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    stmt = (
        sa.insert(tok)
        .values(
            name=name[:64],
            token_hash=_hash(token),
            scopes=" ".join(scope_list),
            created_at=now,
            expires_at=expires_at,
        )
        .returning(tok.c.id)
    )
    return int(conn.execute(stmt).scalar_one()), token


def verify_token(conn: Connection, token: str, *, now: datetime) -> TokenInfo | None:
    """The token's grant, or None if it is unknown, revoked or expired (the caller answers 401)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    digest = _hash(token)
    columns = (tok.c.id, tok.c.name, tok.c.scopes, tok.c.created_at, tok.c.expires_at, tok.c.revoked_at)
    row = conn.execute(sa.select(*columns, tok.c.token_hash).where(tok.c.token_hash == digest)).one_or_none()
    if row is None or not hmac.compare_digest(str(row.token_hash), digest):
        return None
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return TokenInfo(row.id, row.name, frozenset(row.scopes.split()), row.created_at, row.expires_at, row.revoked_at)


def revoke_token(conn: Connection, token_id: int, *, now: datetime) -> None:
    stmt = sa.update(tok).where(tok.c.id == token_id, tok.c.revoked_at.is_(None)).values(revoked_at=now)
    if conn.execute(stmt).rowcount != 1 and not conn.execute(sa.select(tok.c.id).where(tok.c.id == token_id)).first():
        raise NotFound(f"token {token_id} does not exist")


def list_tokens(conn: Connection) -> list[TokenInfo]:
    rows = conn.execute(
        sa.select(tok.c.id, tok.c.name, tok.c.scopes, tok.c.created_at, tok.c.expires_at, tok.c.revoked_at)
        .order_by(tok.c.id)
    )  # fmt: skip
    return [
        TokenInfo(r.id, r.name, frozenset(r.scopes.split()), r.created_at, r.expires_at, r.revoked_at) for r in rows
    ]
