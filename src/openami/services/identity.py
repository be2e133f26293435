"""Identity services: login, bearer-token authentication, accounts and tokens administration.

Each function owns its unit of work. Authentication failures are committed before they are raised
(the failed-login counter and the audit entry must survive the refused request).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Connection, Engine

from openami.db import tokens as token_repo
from openami.errors import InvalidInput, Unauthenticated
from openami.security import audit
from openami.security import identity as ident
from openami.security.identity import Account, IssuedToken, NewAccount, Principal, RoleGrant
from openami.security.policy import ALL_SCOPES, RequestScope, Role, authorize
from openami.settings import IdentitySettings

__all__ = [
    "Account",
    "IssuedToken",
    "NewAccount",
    "RoleGrant",
    "TokenView",
    "authenticate_bearer",
    "create_account",
    "ensure_admin_token",
    "issue_token",
    "list_accounts",
    "list_tokens",
    "login",
    "me",
    "register_client",
    "revoke_token",
    "set_enabled",
    "set_roles",
]

ADMIN = "admin"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MAX_HEADER = 256


@dataclass(frozen=True, slots=True)
class TokenView:
    """A token as administrators see it (never the token or its hash)."""

    id: int
    name: str
    owner: str | None
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _printable(text: str, limit: int) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit]) or "-"


# -- login and bearer tokens -----------------------------------------------------------------------


def login(
    engine: Engine,
    username: str,
    password: str,
    *,
    settings: IdentitySettings,
    scopes: Iterable[str] = (ALL_SCOPES,),
    ttl_minutes: int | None = None,
    now: datetime | None = None,
) -> IssuedToken:
    """Check a password and issue a bearer token carrying the user's roles; Unauthenticated otherwise."""
    moment = _now(now)
    ttl = min(ttl_minutes or settings.token_ttl_minutes, settings.token_ttl_minutes)
    scopes = ident.check_scopes(scopes)  # a bad request is refused before the password is checked
    with engine.connect() as conn:
        try:
            principal = ident.authenticate(conn, username, password, now=moment, settings=settings)
        except Unauthenticated:
            conn.commit()  # keep the failure's counter, audit entry and security event
            raise
        issued = ident.issue_token(conn, principal, ttl=timedelta(minutes=ttl), now=moment, scopes=scopes)
        conn.commit()
    return issued


def _bearer_token(values: Sequence[str]) -> str:
    """The token of exactly one ``Authorization: Bearer <token>`` header; Unauthenticated otherwise."""
    if not values:
        raise Unauthenticated("a bearer token is required", code="token-missing")
    parts = values[0].split(" ")
    if (
        len(values) != 1
        or len(values[0]) > _MAX_HEADER
        or len(parts) != 2
        or parts[0].lower() != "bearer"
        or not _TOKEN_CHARS.fullmatch(parts[1])
    ):
        raise Unauthenticated("the Authorization header is not 'Bearer <token>'", code="token-malformed")
    return parts[1]


def _resolve(conn: Connection, authorization: Sequence[str], now: datetime) -> tuple[RequestScope, int]:
    resolved = ident.resolve_token(conn, _bearer_token(authorization), now=now)
    if resolved is None:
        raise Unauthenticated("the bearer token is unknown, revoked or expired", code="token-invalid")
    return resolved


def authenticate_bearer(
    engine: Engine, authorization: Sequence[str], *, method: str, path: str, now: datetime | None = None
) -> RequestScope:
    """The RequestScope of a request's ``Authorization`` header values; Unauthenticated otherwise.

    Every outcome is audited (one entry per request): the token's use, or why it was refused.
    """
    moment = _now(now)
    details: dict[str, str | int | float | bool | None] = {"method": method[:16], "path": _printable(path, 200)}
    with engine.connect() as conn:
        try:
            scope, token_id = _resolve(conn, authorization, moment)
        except Unauthenticated as exc:
            entry = audit.AuditEntry("anonymous", "auth.token-use", "failed", details={**details, "reason": exc.code})
            audit.record(conn, entry, now=moment)
            conn.commit()
            raise
        entry = audit.AuditEntry(scope.principal, "auth.token-use", "ok", resource=f"token:{token_id}", details=details)
        audit.record(conn, entry, now=moment)
        conn.commit()
    return scope


def me(engine: Engine, scope: RequestScope, *, now: datetime | None = None) -> RequestScope:
    with engine.connect() as conn:
        authorize(conn, scope, "auth.me", now=_now(now))
    return scope


def ensure_admin_token(engine: Engine, *, now: datetime) -> str | None:
    """On first run create the 'admin' account (security_admin + ami_operator, no password) and
    return a token for it, once. Tokens from before accounts existed named 'admin' are adopted."""
    with engine.begin() as conn:
        if ident.list_accounts(conn, username=ADMIN):
            return None
        grants = [RoleGrant(Role.SECURITY_ADMIN), RoleGrant(Role.AMI_OPERATOR)]
        spec = NewAccount(ADMIN, grants, display_name="first-run administrator")
        account_id = ident.create_account(conn, spec, settings=IdentitySettings(), now=now)
        legacy = [t.id for t in token_repo.list_tokens(conn) if t.name == ADMIN and t.revoked_at is None]
        for token_id in legacy:
            ident.attach_token(conn, token_id, account_id)
        if legacy:
            return None
        principal = ident.load_principal(conn, account_id)
        assert principal is not None
        return ident.issue_token(conn, principal, ttl=None, now=now, issued_by="system:bootstrap").token


# -- administration (security_admin) ---------------------------------------------------------------


def _audit_admin(
    conn: Connection, scope: RequestScope, action: str, resource: str, now: datetime, **details: str
) -> None:
    audit.record(conn, audit.AuditEntry(scope.principal, action, "ok", resource=resource, details=details), now=now)


def create_account(
    engine: Engine, scope: RequestScope, spec: NewAccount, *, settings: IdentitySettings, now: datetime | None = None
) -> Account:
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, "accounts.manage", now=moment)
        ident.create_account(conn, spec, settings=settings, now=moment)
        roles = ",".join(sorted(g.role for g in spec.grants))
        resource = f"account:{spec.username}"
        _audit_admin(conn, scope, "accounts.manage", resource, moment, change="create", roles=roles)
        account = ident.get_account(conn, spec.username)
        conn.commit()
    return account


def list_accounts(engine: Engine, scope: RequestScope, *, now: datetime | None = None) -> list[Account]:
    with engine.connect() as conn:
        authorize(conn, scope, "accounts.manage", now=_now(now))
        return ident.list_accounts(conn)


def set_roles(
    engine: Engine,
    scope: RequestScope,
    username: str,
    grants: Sequence[RoleGrant],
    premises: Sequence[str] = (),
    *,
    now: datetime | None = None,
) -> Account:
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, "accounts.manage", now=moment)
        ident.set_roles(conn, username, grants, premises, now=moment)
        roles = ",".join(sorted(g.role for g in grants))
        _audit_admin(conn, scope, "accounts.manage", f"account:{username}", moment, change="roles", roles=roles)
        account = ident.get_account(conn, username)
        conn.commit()
    return account


def set_enabled(
    engine: Engine, scope: RequestScope, username: str, enabled: bool, *, now: datetime | None = None
) -> Account:
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, "accounts.manage", now=moment)
        ident.set_enabled(conn, username, enabled)
        change = "enable" if enabled else "disable"
        _audit_admin(conn, scope, "accounts.manage", f"account:{username}", moment, change=change)
        account = ident.get_account(conn, username)
        conn.commit()
    return account


def issue_token(
    engine: Engine,
    scope: RequestScope,
    username: str,
    *,
    ttl: timedelta | None,
    scopes: Iterable[str] = (ALL_SCOPES,),
    now: datetime | None = None,
) -> IssuedToken:
    """A token for another account (e.g. a service account), issued by a token administrator."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, "tokens.manage", now=moment)
        principal: Principal | None = ident.load_principal(conn, ident.get_account(conn, username).id)
        if principal is None:
            raise InvalidInput(f"account {username!r} is disabled")
        issued = ident.issue_token(conn, principal, ttl=ttl, now=moment, scopes=scopes, issued_by=scope.principal)
        conn.commit()
    return issued


def list_tokens(engine: Engine, scope: RequestScope, *, now: datetime | None = None) -> list[TokenView]:
    with engine.connect() as conn:
        authorize(conn, scope, "tokens.manage", now=_now(now))
        owners = ident.token_owners(conn)
        return [
            TokenView(t.id, t.name, owners.get(t.id), t.scopes, t.created_at, t.expires_at, t.revoked_at)
            for t in token_repo.list_tokens(conn)
        ]


def revoke_token(engine: Engine, scope: RequestScope, token_id: int, *, now: datetime | None = None) -> None:
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, "tokens.manage", now=moment)
        token_repo.revoke_token(conn, token_id, now=moment)
        _audit_admin(conn, scope, "tokens.manage", f"token:{token_id}", moment, change="revoke")
        conn.commit()


def register_client(
    engine: Engine,
    scope: RequestScope,
    username: str,
    *,
    subject_cn: str,
    fingerprint: str,
    now: datetime | None = None,
) -> int:
    """Map a client certificate (CN and SHA-256 fingerprint) to a system-client account (mutual TLS)."""
    moment = _now(now)
    with engine.connect() as conn:
        authorize(conn, scope, "accounts.manage", now=moment)
        client_id = ident.register_system_client(
            conn, username, subject_cn=subject_cn, fingerprint=fingerprint, now=moment
        )
        _audit_admin(conn, scope, "accounts.manage", f"account:{username}", moment, change="register-certificate")
        conn.commit()
    return client_id
