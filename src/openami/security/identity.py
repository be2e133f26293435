"""Accounts and their roles: argon2id passwords, login with lockout, token ownership, mTLS client mapping.

An account is a person (``kind`` "user", password login) or a system client ("client", mutual TLS,
no password). ``authenticate`` and ``principal_for_certificate`` write what a failure leaves behind
(the failed-login counter, the audit entry, the security event) in the CALLER's connection and then
raise ``Unauthenticated``: the caller must commit even when they raise (``services.identity`` does),
so failures are kept although the request fails. Every login failure has the same message, whether
the user is unknown, the password wrong, or the account locked or disabled.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import tables as t
from openami.db import tokens as token_repo
from openami.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from openami.security import audit, events
from openami.security.passwords import hash_password, needs_rehash, verify_password
from openami.security.policy import ACTIONS, ALL_SCOPES, RequestScope, Role
from openami.settings import IdentitySettings

__all__ = [
    "LOGIN_REFUSED",
    "Account",
    "IssuedToken",
    "NewAccount",
    "Principal",
    "RoleGrant",
    "attach_token",
    "authenticate",
    "check_scopes",
    "create_account",
    "get_account",
    "hash_password",
    "issue_token",
    "list_accounts",
    "load_principal",
    "principal_for_certificate",
    "register_system_client",
    "resolve_token",
    "set_enabled",
    "set_roles",
    "token_owners",
]

LOGIN_REFUSED = "invalid username or password"
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_AREA_ROLES = frozenset({Role.NETWORK_OPERATOR, Role.GAS_NETWORK_OPERATOR})
_acc = t.accounts


@dataclass(frozen=True, slots=True)
class RoleGrant:
    """One role of an account; ``area`` (a substation id) is required for network operators only."""

    role: Role
    area: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated account with its current roles."""

    account_id: int
    username: str
    kind: str  # "user" | "client"
    roles: frozenset[Role]
    area: str | None = None
    premises: frozenset[str] = frozenset()

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.username}"

    def scope(self, scopes: Iterable[str] = (ALL_SCOPES,)) -> RequestScope:
        return RequestScope(self.actor, self.roles, frozenset(scopes), self.area, self.premises)


@dataclass(frozen=True, slots=True)
class NewAccount:
    """An account to create; ``password`` None means no password login (system clients, first-run admin)."""

    username: str
    grants: Sequence[RoleGrant]
    password: str | None = field(default=None, repr=False)
    display_name: str = ""
    premises: Sequence[str] = ()
    kind: str = "user"  # "user" | "client"


@dataclass(frozen=True, slots=True)
class Account:
    """An account as administrators see it (never its password hash)."""

    id: int
    username: str
    display_name: str
    kind: str
    enabled: bool
    has_password: bool
    grants: tuple[RoleGrant, ...]
    premises: tuple[str, ...]
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: int
    token: str  # shown once; only its hash is stored
    expires_at: datetime | None


# -- accounts and roles ----------------------------------------------------------------------------


def _check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise InvalidInput("a username is 1-64 characters: lower-case letters, digits, '.', '_' or '-'")


def _check_grants(conn: Connection, grants: Sequence[RoleGrant], premises: Sequence[str]) -> None:
    roles = [g.role for g in grants]
    if len(set(roles)) != len(roles):
        raise InvalidInput("a role is assigned at most once")
    for grant in grants:
        if (grant.area is not None) != (grant.role in _AREA_ROLES):
            raise InvalidInput(f"role {grant.role} {'needs' if grant.role in _AREA_ROLES else 'takes no'} area")
    areas = {g.area for g in grants if g.area is not None}
    if len(areas) > 1:
        raise InvalidInput("an account has one distribution area")
    if bool(premises) != (Role.CUSTOMER in roles):
        raise InvalidInput("premises are given exactly when the customer role is assigned")
    _check_exist(conn, t.substations, areas, "area")
    _check_exist(conn, t.premises, set(premises), "premise")


def _check_exist(conn: Connection, table: sa.Table, ids: set[str], what: str) -> None:
    if not ids:
        return
    found = {r[0] for r in conn.execute(sa.select(table.c.id).where(table.c.id.in_(sorted(ids))))}
    if missing := sorted(ids - found):
        raise InvalidInput(f"unknown {what}(s): {', '.join(m[:32] for m in missing[:5])}")


def _write_grants(
    conn: Connection, account_id: int, grants: Sequence[RoleGrant], premises: Sequence[str], now: datetime
) -> None:
    conn.execute(sa.delete(t.account_roles).where(t.account_roles.c.account_id == account_id))
    conn.execute(sa.delete(t.account_premises).where(t.account_premises.c.account_id == account_id))
    if grants:
        rows = [{"account_id": account_id, "role": str(g.role), "area": g.area, "granted_at": now} for g in grants]
        conn.execute(sa.insert(t.account_roles), rows)
    if premises:
        conn.execute(sa.insert(t.account_premises), [{"account_id": account_id, "premise_id": p} for p in premises])


def create_account(conn: Connection, spec: NewAccount, *, settings: IdentitySettings, now: datetime) -> int:
    """Add an account with its roles; returns its id. InvalidInput, or Conflict for a taken username."""
    _check_username(spec.username)
    if spec.kind not in ("user", "client") or (spec.kind == "client" and spec.password is not None):
        raise InvalidInput("an account is a 'user' or a password-less 'client'")
    _check_grants(conn, spec.grants, spec.premises)
    if conn.execute(sa.select(_acc.c.id).where(_acc.c.username == spec.username)).first() is not None:
        raise Conflict(f"account {spec.username!r} already exists")
    hashed = None if spec.password is None else hash_password(spec.password, settings)
    values = {"username": spec.username, "display_name": spec.display_name[:128] or spec.username, "kind": spec.kind}
    stmt = sa.insert(_acc).values(**values, password_hash=hashed, created_at=now).returning(_acc.c.id)
    account_id = int(conn.execute(stmt).scalar_one())
    _write_grants(conn, account_id, spec.grants, spec.premises, now)
    return account_id


def _account_id(conn: Connection, username: str) -> int:
    found = conn.execute(sa.select(_acc.c.id).where(_acc.c.username == username)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"account {username[:64]!r} does not exist")
    return int(found)


def set_roles(
    conn: Connection, username: str, grants: Sequence[RoleGrant], premises: Sequence[str] = (), *, now: datetime
) -> None:
    """Replace an account's roles and premises (its tokens carry the new roles from their next use)."""
    account_id = _account_id(conn, username)
    _check_grants(conn, grants, premises)
    _write_grants(conn, account_id, grants, premises, now)


def set_enabled(conn: Connection, username: str, enabled: bool) -> None:
    """Disable (its tokens stop working at once) or enable an account; enabling also clears a lockout."""
    values: dict[str, Any] = {"enabled": enabled}
    if enabled:
        values.update(failed_logins=0, locked_until=None)
    conn.execute(sa.update(_acc).where(_acc.c.id == _account_id(conn, username)).values(**values))


def list_accounts(conn: Connection, *, username: str | None = None) -> list[Account]:
    query = sa.select(_acc).order_by(_acc.c.id)
    if username is not None:
        query = query.where(_acc.c.username == username)
    rows = conn.execute(query).all()
    ids = [r.id for r in rows]
    grants: dict[int, list[RoleGrant]] = {i: [] for i in ids}
    premises: dict[int, list[str]] = {i: [] for i in ids}
    ar, ap = t.account_roles, t.account_premises
    for r in conn.execute(sa.select(ar).where(ar.c.account_id.in_(ids)).order_by(ar.c.role)):
        grants[r.account_id].append(RoleGrant(Role(r.role), r.area))
    for r in conn.execute(sa.select(ap).where(ap.c.account_id.in_(ids)).order_by(ap.c.premise_id)):
        premises[r.account_id].append(r.premise_id)
    return [
        Account(
            r.id, r.username, r.display_name, r.kind, bool(r.enabled), r.password_hash is not None,
            tuple(grants[r.id]), tuple(premises[r.id]), int(r.failed_logins), r.locked_until, r.created_at,
            r.last_login_at,
        )
        for r in rows
    ]  # fmt: skip


def get_account(conn: Connection, username: str) -> Account:
    found = list_accounts(conn, username=username)
    if not found:
        raise NotFound(f"account {username[:64]!r} does not exist")
    return found[0]


def load_principal(conn: Connection, account_id: int) -> Principal | None:
    """The account as a principal with its current roles; None when it is unknown or disabled."""
    row = conn.execute(
        sa.select(_acc.c.username, _acc.c.kind).where(_acc.c.id == account_id, _acc.c.enabled.is_(True))
    ).one_or_none()
    if row is None:
        return None
    ar, ap = t.account_roles, t.account_premises
    roles = conn.execute(sa.select(ar.c.role, ar.c.area).where(ar.c.account_id == account_id)).all()
    premises = conn.execute(sa.select(ap.c.premise_id).where(ap.c.account_id == account_id)).scalars()
    area = next((r.area for r in roles if r.area is not None), None)
    return Principal(
        account_id, row.username, row.kind, frozenset(Role(r.role) for r in roles), area, frozenset(premises)
    )


# -- login -----------------------------------------------------------------------------------------


def authenticate(
    conn: Connection, username: str, password: str, *, now: datetime, settings: IdentitySettings | None = None
) -> Principal:
    """The principal for a username and password, or Unauthenticated with ``LOGIN_REFUSED``.

    Unknown users cost the same argon2 verification as known ones. ``settings.lockout_threshold``
    consecutive failures lock the account for ``settings.lockout_minutes``; attempts while locked
    fail without counting. Failures are written in ``conn``: commit it even when this raises.
    """
    settings = settings or IdentitySettings()
    row = None
    if USERNAME.fullmatch(username):
        cols = (_acc.c.id, _acc.c.password_hash, _acc.c.enabled, _acc.c.locked_until)
        row = conn.execute(sa.select(*cols).where(_acc.c.username == username, _acc.c.kind == "user")).one_or_none()
    if row is None or row.password_hash is None or not row.enabled:
        verify_password(None, password, settings)  # the same work as a real check
        _refuse(conn, username, "unknown-user" if row is None else "no-login", now)
    if row.locked_until is not None and row.locked_until > now:
        verify_password(None, password, settings)
        _refuse(conn, username, "locked", now)
    if not verify_password(row.password_hash, password, settings):
        _count_failure(conn, int(row.id), username, settings, now)
        _refuse(conn, username, "wrong-password", now)
    values: dict[str, Any] = {"failed_logins": 0, "locked_until": None, "last_login_at": now}
    if needs_rehash(row.password_hash, settings):
        values["password_hash"] = hash_password(password, settings)
    conn.execute(sa.update(_acc).where(_acc.c.id == row.id).values(**values))
    principal = load_principal(conn, int(row.id))
    assert principal is not None  # enabled, checked above
    audit.record(conn, audit.AuditEntry(principal.actor, "auth.login", "ok"), now=now)
    return principal


def _count_failure(conn: Connection, account_id: int, username: str, settings: IdentitySettings, now: datetime) -> None:
    bump = sa.update(_acc).where(_acc.c.id == account_id).values(failed_logins=_acc.c.failed_logins + 1)
    failures = int(conn.execute(bump.returning(_acc.c.failed_logins)).scalar_one())
    if failures < settings.lockout_threshold:
        return
    until = now + timedelta(minutes=settings.lockout_minutes)
    conn.execute(sa.update(_acc).where(_acc.c.id == account_id).values(failed_logins=0, locked_until=until))
    details: dict[str, str | int | float | bool | None] = {"failures": failures, "locked_until": until.isoformat()}
    events.raise_event(conn, "api.lockout", now=now, actor=f"user:{username}", details=details)


def _refuse(conn: Connection, attempted: str, reason: str, now: datetime) -> NoReturn:
    """Record a failed login and raise the one message every failure gets."""
    actor = f"user:{attempted}" if USERNAME.fullmatch(attempted) else "user:?"  # never echo arbitrary input
    audit.record(conn, audit.AuditEntry(actor, "auth.login", "failed", details={"reason": reason}), now=now)
    events.raise_event(conn, "api.login-failed", now=now, actor=actor, details={"reason": reason})
    raise Unauthenticated(LOGIN_REFUSED)


# -- tokens ----------------------------------------------------------------------------------------


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The sorted distinct scopes; InvalidInput unless each is a policy action name or '*'."""
    wanted = sorted(set(scopes))
    if not wanted or any(s != ALL_SCOPES and s not in ACTIONS for s in wanted):
        raise InvalidInput("token scopes are policy action names or '*'")
    return wanted


def issue_token(
    conn: Connection,
    principal: Principal,
    *,
    ttl: timedelta | None,
    now: datetime,
    scopes: Iterable[str] = (ALL_SCOPES,),
    issued_by: str | None = None,
) -> IssuedToken:
    """A bearer token owned by ``principal``: it carries the owner's roles, narrowed by ``scopes``."""
    wanted = check_scopes(scopes)
    expires_at = None if ttl is None else now + ttl
    token_id, token = token_repo.create_token(conn, principal.username, wanted, now=now, expires_at=expires_at)
    conn.execute(sa.insert(t.account_tokens).values(token_id=token_id, account_id=principal.account_id))
    entry = audit.AuditEntry(
        issued_by or principal.actor, "auth.token-issue", "ok", resource=f"token:{token_id}",
        details={"owner": principal.actor, "scopes": " ".join(wanted)[:500]},
    )  # fmt: skip
    audit.record(conn, entry, now=now)
    return IssuedToken(token_id, token, expires_at)


def attach_token(conn: Connection, token_id: int, account_id: int) -> None:
    """Make an existing token (e.g. one created before accounts existed) belong to an account."""
    conn.execute(sa.insert(t.account_tokens).values(token_id=token_id, account_id=account_id))


def token_owners(conn: Connection) -> dict[int, str]:
    """token id -> owner's actor string, for the tokens that have an owner."""
    query = sa.select(t.account_tokens.c.token_id, _acc.c.kind, _acc.c.username).join(
        _acc, _acc.c.id == t.account_tokens.c.account_id
    )
    return {int(r.token_id): f"{r.kind}:{r.username}" for r in conn.execute(query)}


def resolve_token(conn: Connection, token: str, *, now: datetime) -> tuple[RequestScope, int] | None:
    """(scope, token id) for a valid token whose owner is enabled; None otherwise (the caller answers 401)."""
    info = token_repo.verify_token(conn, token, now=now)
    if info is None:
        return None
    owner = conn.execute(
        sa.select(t.account_tokens.c.account_id).where(t.account_tokens.c.token_id == info.id)
    ).scalar_one_or_none()
    principal = None if owner is None else load_principal(conn, int(owner))
    if principal is None:
        return None  # a token without an (enabled) owner grants nothing
    return principal.scope(info.scopes), info.id


# -- system clients (mutual TLS) -------------------------------------------------------------------


def _fingerprint(value: str) -> str:
    normalized = value.replace(":", "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", normalized):
        raise InvalidInput("a certificate fingerprint is the SHA-256 of its DER, 64 hex digits")
    return normalized


def register_system_client(conn: Connection, username: str, *, subject_cn: str, fingerprint: str, now: datetime) -> int:
    """Map a client certificate (subject CN and SHA-256 fingerprint) to a 'client' account."""
    account = get_account(conn, username)
    if account.kind != "client":
        raise InvalidInput(f"account {username!r} is not a system client")
    digest = _fingerprint(fingerprint)
    sc = t.system_clients
    if conn.execute(sa.select(sc.c.id).where(sc.c.fingerprint == digest)).first() is not None:
        raise Conflict("this certificate is already registered")
    values = {"account_id": account.id, "subject_cn": subject_cn[:255], "fingerprint": digest, "created_at": now}
    return int(conn.execute(sa.insert(sc).values(**values).returning(sc.c.id)).scalar_one())


def principal_for_certificate(conn: Connection, subject_cn: str, fingerprint: str, *, now: datetime) -> Principal:
    """The principal of a verified client certificate; Unauthenticated unless registered (CN and
    fingerprint both match, not revoked, account enabled). Failures are written in ``conn``."""
    sc = t.system_clients
    try:
        digest = _fingerprint(fingerprint)
    except InvalidInput:
        digest = ""
    row = conn.execute(
        sa.select(sc.c.account_id, sc.c.subject_cn).where(sc.c.fingerprint == digest, sc.c.revoked_at.is_(None))
    ).one_or_none()
    principal = None
    if row is not None and secrets.compare_digest(row.subject_cn.encode(), subject_cn.encode()):
        principal = load_principal(conn, int(row.account_id))
    if principal is None:
        shown_cn = "".join(ch if ch.isprintable() else "?" for ch in subject_cn[:128])
        details: dict[str, str | int | float | bool | None] = {
            "subject_cn": shown_cn, "fingerprint": digest or "malformed", "reason": "not registered",
        }  # fmt: skip
        audit.record(conn, audit.AuditEntry("client:?", "auth.certificate", "failed", details=details), now=now)
        events.raise_event(conn, "api.bad-certificate", now=now, actor="client:?", details=details)
        raise Unauthenticated("the client certificate is not registered")
    return principal
