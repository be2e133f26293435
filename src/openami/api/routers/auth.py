"""Login, the caller's identity, and the administration of accounts, roles and tokens."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field, SecretStr

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import identity as identity_services
from openami.services.context import ALL_SCOPES, Role

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in ((401, "missing or invalid token"), (403, "not allowed"), (404, "unknown account or token"))
}
router = APIRouter(prefix="/v1", tags=["identity"], responses=_ERRORS)
Username = Annotated[str, Path(max_length=64, description="account name")]


class LoginIn(BaseModel):
    username: str = Field(max_length=256)
    password: SecretStr = Field(max_length=1024)
    scopes: list[str] = Field(
        default=[ALL_SCOPES], max_length=64, description="policy actions; '*' = all the roles allow"
    )
    ttl_minutes: int | None = Field(default=None, ge=1, description="at most the configured token lifetime")


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    token_id: int
    expires_at: datetime | None
    expires_in: int | None = Field(description="seconds")


class MeOut(BaseModel):
    principal: str
    roles: list[str]
    scopes: list[str]
    area: str | None
    premises: list[str]


class RoleIn(BaseModel):
    role: Role
    area: str | None = Field(default=None, max_length=32, description="substation id; network operators only")


class RolesIn(BaseModel):
    roles: list[RoleIn] = Field(max_length=len(Role))
    premises: list[str] = Field(default=[], max_length=1000, description="customers only")


class AccountIn(RolesIn):
    username: str = Field(max_length=64)
    display_name: str = Field(default="", max_length=128)
    kind: Literal["user", "client"] = "user"
    password: SecretStr | None = Field(default=None, max_length=1024, description="none for system clients")


class AccountOut(BaseModel):
    username: str
    display_name: str
    kind: str
    enabled: bool
    has_password: bool
    roles: list[RoleIn]
    premises: list[str]
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None


class TokenIn(BaseModel):
    scopes: list[str] = Field(default=[ALL_SCOPES], max_length=64)
    ttl_minutes: int | None = Field(default=None, ge=1, le=366 * 24 * 60, description="none: no expiry")


class TokenViewOut(BaseModel):
    id: int
    name: str
    owner: str | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def _token_out(issued: identity_services.IssuedToken, now: datetime) -> TokenOut:
    expires_in = None if issued.expires_at is None else int((issued.expires_at - now).total_seconds())
    return TokenOut(access_token=issued.token, token_id=issued.id, expires_at=issued.expires_at, expires_in=expires_in)


def _account_out(a: identity_services.Account) -> AccountOut:
    return AccountOut(
        username=a.username, display_name=a.display_name, kind=a.kind, enabled=a.enabled, has_password=a.has_password,
        roles=[RoleIn(role=g.role, area=g.area) for g in a.grants], premises=list(a.premises),
        failed_logins=a.failed_logins, locked_until=a.locked_until, created_at=a.created_at,
        last_login_at=a.last_login_at,
    )  # fmt: skip


def _token_view(t: identity_services.TokenView) -> TokenViewOut:
    return TokenViewOut(
        id=t.id, name=t.name, owner=t.owner, scopes=sorted(t.scopes), created_at=t.created_at,
        expires_at=t.expires_at, revoked_at=t.revoked_at,
    )  # fmt: skip


def _grants(body: RolesIn) -> list[identity_services.RoleGrant]:
    return [identity_services.RoleGrant(r.role, r.area) for r in body.roles]


@router.post("/auth/token", response_model=TokenOut, tags=["auth"])
def login(platform: PlatformDep, body: LoginIn) -> TokenOut:
    """Exchange a username and password for a bearer token carrying the user's roles (public route)."""
    now = platform.now()
    issued = identity_services.login(
        platform.engine, body.username, body.password.get_secret_value(), settings=platform.settings.identity,
        scopes=body.scopes, ttl_minutes=body.ttl_minutes, now=now,
    )  # fmt: skip
    return _token_out(issued, now)


@router.get("/auth/me", response_model=MeOut, tags=["auth"])
def me(platform: PlatformDep, scope: Scope) -> MeOut:
    """Who the token belongs to: principal, roles, token scopes, area and premises."""
    found = identity_services.me(platform.engine, scope, now=platform.now())
    return MeOut(
        principal=found.principal, roles=sorted(found.roles), scopes=sorted(found.scopes), area=found.area,
        premises=sorted(found.premises),
    )  # fmt: skip


@router.post("/accounts", response_model=AccountOut, status_code=status.HTTP_201_CREATED)
def create_account(platform: PlatformDep, scope: Scope, body: AccountIn) -> AccountOut:
    """Create an operator, customer or system-client account with its roles (security_admin)."""
    password = None if body.password is None else body.password.get_secret_value()
    spec = identity_services.NewAccount(
        body.username, _grants(body), password=password, display_name=body.display_name, premises=body.premises,
        kind=body.kind,
    )  # fmt: skip
    account = identity_services.create_account(
        platform.engine, scope, spec, settings=platform.settings.identity, now=platform.now()
    )
    return _account_out(account)


@router.get("/accounts", response_model=list[AccountOut])
def list_accounts(platform: PlatformDep, scope: Scope) -> list[AccountOut]:
    return [_account_out(a) for a in identity_services.list_accounts(platform.engine, scope, now=platform.now())]


@router.put("/accounts/{username}/roles", response_model=AccountOut)
def set_roles(platform: PlatformDep, scope: Scope, username: Username, body: RolesIn) -> AccountOut:
    """Replace an account's roles and premises; its tokens carry the new roles from their next use."""
    account = identity_services.set_roles(
        platform.engine, scope, username, _grants(body), body.premises, now=platform.now()
    )
    return _account_out(account)


@router.post("/accounts/{username}/disable", response_model=AccountOut)
def disable_account(platform: PlatformDep, scope: Scope, username: Username) -> AccountOut:
    """Disable an account: its tokens stop working at once."""
    return _account_out(identity_services.set_enabled(platform.engine, scope, username, False, now=platform.now()))


@router.post("/accounts/{username}/enable", response_model=AccountOut)
def enable_account(platform: PlatformDep, scope: Scope, username: Username) -> AccountOut:
    """Enable an account again (also clears a lockout)."""
    return _account_out(identity_services.set_enabled(platform.engine, scope, username, True, now=platform.now()))


@router.post("/accounts/{username}/tokens", response_model=TokenOut, status_code=status.HTTP_201_CREATED)
def issue_token(platform: PlatformDep, scope: Scope, username: Username, body: TokenIn) -> TokenOut:
    """Issue a token for an account (e.g. a service account), shown once (security_admin)."""
    now = platform.now()
    ttl = None if body.ttl_minutes is None else timedelta(minutes=body.ttl_minutes)
    issued = identity_services.issue_token(platform.engine, scope, username, ttl=ttl, scopes=body.scopes, now=now)
    return _token_out(issued, now)


@router.get("/tokens", response_model=list[TokenViewOut])
def list_tokens(platform: PlatformDep, scope: Scope) -> list[TokenViewOut]:
    """Every token with its owner, scopes and expiry (never the token itself)."""
    return [_token_view(t) for t in identity_services.list_tokens(platform.engine, scope, now=platform.now())]


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(platform: PlatformDep, scope: Scope, token_id: Annotated[int, Path(ge=1)]) -> None:
    identity_services.revoke_token(platform.engine, scope, token_id, now=platform.now())
