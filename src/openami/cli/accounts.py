"""``openami accounts``: create, list, disable and enable accounts, issue tokens, register client certificates."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta

import click
from rich.console import Console
from rich.table import Table

from openami.cli.platform import CLI_SCOPE
from openami.errors import OpenAmiError
from openami.services import identity as identity_services
from openami.services.bootstrap import open_storage
from openami.services.context import Role
from openami.settings import Settings

_AREA_ROLES = {Role.NETWORK_OPERATOR, Role.GAS_NETWORK_OPERATOR}
_DURATION = re.compile(r"(\d+)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _duration(value: str) -> timedelta:
    match = _DURATION.fullmatch(value.strip())
    if match is None or int(match[1]) < 1:
        raise click.BadParameter(f"{value!r} is not a duration like 30m, 8h or 90d", param_hint="--ttl")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _read_password(from_stdin: bool, min_length: int) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < min_length:
        raise click.ClickException(f"a password has at least {min_length} characters")
    return password


@click.group()
def accounts() -> None:
    """Operator, customer and system-client accounts and their roles."""


@accounts.command("create")
@click.argument("username")
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice([str(r) for r in Role]))
@click.option("--area", help="substation id (network operator roles)")
@click.option("--premise", "premises", multiple=True, help="premise id (customer role; repeatable)")
@click.option("--name", "display_name", default="", help="display name")
@click.option("--client", is_flag=True, help="a system client (mutual TLS, no password)")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
def create(
    username: str,
    roles: tuple[str, ...],
    area: str | None,
    premises: tuple[str, ...],
    display_name: str,
    client: bool,
    password_stdin: bool,
) -> None:
    """Create account USERNAME with one or more --role (prompts twice for the password, hidden)."""
    settings = Settings()
    grants = [identity_services.RoleGrant(Role(r), area if Role(r) in _AREA_ROLES else None) for r in roles]
    password = None if client else _read_password(password_stdin, settings.identity.min_password_length)
    spec = identity_services.NewAccount(
        username, grants, password=password, display_name=display_name, premises=premises,
        kind="client" if client else "user",
    )  # fmt: skip
    try:
        engine = open_storage(settings)
        identity_services.create_account(engine, CLI_SCOPE, spec, settings=settings.identity)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"created {'client' if client else 'user'} {username} with roles {', '.join(sorted(roles))}")


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def list_accounts(as_json: bool) -> None:
    """List accounts with their roles, area, premises and lockout state."""
    try:
        found = identity_services.list_accounts(open_storage(Settings()), CLI_SCOPE)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        rows = [
            {"username": a.username, "kind": a.kind, "enabled": a.enabled, "roles": [str(g.role) for g in a.grants],
             "area": next((g.area for g in a.grants if g.area), None), "premises": list(a.premises),
             "locked_until": a.locked_until.isoformat() if a.locked_until else None}
            for a in found
        ]  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"accounts ({len(found)})")
    for column in ("username", "kind", "enabled", "roles", "area", "premises", "locked until"):
        table.add_column(column)
    for a in found:
        area = next((g.area for g in a.grants if g.area), None)
        locked = a.locked_until.isoformat() if a.locked_until else ""
        roles = ", ".join(str(g.role) for g in a.grants)
        table.add_row(a.username, a.kind, str(a.enabled), roles, area or "", ", ".join(a.premises), locked)
    Console().print(table)


def _set_enabled(username: str, enabled: bool) -> None:
    try:
        identity_services.set_enabled(open_storage(Settings()), CLI_SCOPE, username, enabled)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{'enabled' if enabled else 'disabled'} {username}")


@accounts.command("disable")
@click.argument("username")
def disable(username: str) -> None:
    """Disable USERNAME: it can no longer log in and its tokens stop working."""
    _set_enabled(username, False)


@accounts.command("enable")
@click.argument("username")
def enable(username: str) -> None:
    """Enable USERNAME again (also clears a lockout)."""
    _set_enabled(username, True)


@accounts.command("token")
@click.argument("username")
@click.option("--ttl", default="8h", show_default=True, help="lifetime: 30m, 8h, 90d")
@click.option("--scope", "scopes", multiple=True, help="narrow to these policy actions (repeatable; default: all)")
def token(username: str, ttl: str, scopes: tuple[str, ...]) -> None:
    """Issue a bearer token for USERNAME; it is printed once and carries the account's roles."""
    try:
        issued = identity_services.issue_token(
            open_storage(Settings()), CLI_SCOPE, username, ttl=_duration(ttl), scopes=scopes or ("*",)
        )
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    expires = issued.expires_at.isoformat() if issued.expires_at else "never"
    click.echo(f"token {issued.id} for {username}, expires {expires} (shown once):", err=True)
    click.echo(issued.token)


@accounts.command("register-client")
@click.argument("username")
@click.option("--cn", "subject_cn", required=True, help="the certificate's subject common name")
@click.option("--fingerprint", required=True, help="SHA-256 of the certificate's DER, hex (colons allowed)")
def register_client(username: str, subject_cn: str, fingerprint: str) -> None:
    """Map a client certificate to the system-client account USERNAME (mutual TLS)."""
    try:
        identity_services.register_client(
            open_storage(Settings()), CLI_SCOPE, username, subject_cn=subject_cn, fingerprint=fingerprint,
            now=datetime.now(UTC),
        )  # fmt: skip
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"registered certificate {subject_cn} for {username}")
