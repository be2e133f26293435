"""``openami audit`` (verify, show, checkpoint, public-key) and ``openami security`` (events, alerts)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from openami.errors import OpenAmiError
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import security as security_services
from openami.services.bootstrap import open_storage
from openami.settings import Settings

CLI_SCOPE = RequestScope(
    principal="cli:local-admin", roles=frozenset({Role.SECURITY_ADMIN}), scopes=frozenset({ALL_SCOPES})
)
"""The CLI works on the local database and key files directly: whoever can run it can read them."""


def _iso(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date-time", param_hint=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _as_json(items: list[Any]) -> str:
    rows = [{k: _jsonable(v) for k, v in dataclasses.asdict(item).items()} for item in items]
    return json.dumps(rows, indent=2, ensure_ascii=False)


@click.group()
def audit() -> None:
    """The tamper-evident audit log: verify the chain, show entries, sign a checkpoint."""


@audit.command()
@click.option("--public-key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM public key to check checkpoints with (default: the configured signing key's)")  # fmt: skip
@click.option("--from-seq", type=click.IntRange(1), help="start at the signed checkpoint before this entry")
def verify(key_file: Path | None, from_seq: int | None) -> None:
    """Recompute the hash chain and check every signed checkpoint; exit 1 naming the first bad entry."""
    from openami.security.audit_keys import load_public_key  # noqa: PLC0415 - a key only this command reads

    settings = Settings()
    try:
        engine = open_storage(settings)
        if key_file is not None:
            public_key = load_public_key(key_file.read_bytes())
        else:
            public_key = security_services.configure(settings).public_key()
        result = security_services.verify_chain(engine, CLI_SCOPE, public_key=public_key, from_seq=from_seq)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if result.last_checkpoint_seq is None:
        checkpoint = "no signed checkpoint yet"
    else:
        at = result.last_checkpoint_at.isoformat() if result.last_checkpoint_at else "?"
        checkpoint = f"last checkpoint #{result.last_checkpoint_seq} at {at}, {result.checkpoints} verified"
    if result.ok:
        click.echo(f"chain intact: {result.entries} entries, {checkpoint}")
        return
    click.echo(f"chain BROKEN at entry {result.first_bad_seq}: {result.problem}", err=True)
    click.echo(f"({result.entries} entries checked before it, {checkpoint})", err=True)
    raise SystemExit(1)


@audit.command()
@click.option("--actor", help='e.g. "user:alice"')
@click.option("--action", help='e.g. "readings.read"')
@click.option("--outcome", type=click.Choice(["ok", "denied", "failed"]))
@click.option("--meter", "meter_id", type=click.IntRange(1), help="entries about meter:N")
@click.option("--subject", help='whose data, e.g. "premise:P000123"')
@click.option("--since", help="ISO 8601 (UTC if no zone)")
@click.option("--until", help="ISO 8601 (UTC if no zone)")
@click.option("--before-seq", type=click.IntRange(1), help="page: entries before this sequence number")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, security_services.MAX_PAGE))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def show(**options: Any) -> None:
    """Audit entries, newest first, filtered."""
    as_json = options.pop("as_json")
    options["since"] = _iso(options["since"], "--since")
    options["until"] = _iso(options["until"], "--until")
    try:
        records = security_services.audit_entries(open_storage(Settings()), CLI_SCOPE, **options)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(_as_json(records))
        return
    table = Table(title=f"audit log ({len(records)} entries)")
    for column in ("seq", "at", "actor", "action", "outcome", "resource", "subject", "purpose", "details"):
        table.add_column(column)
    for r in records:
        details = json.dumps(r.details, ensure_ascii=False, sort_keys=True) if r.details else ""
        table.add_row(
            str(r.seq), r.at.isoformat(timespec="seconds"), r.actor, r.action, r.outcome, r.resource or "",
            r.subject or "", r.purpose or "", details,
        )  # fmt: skip
    Console().print(table)


@audit.command()
def checkpoint() -> None:
    """Sign the chain's current head now (before a backup, at the end of a day)."""
    settings = Settings()
    try:
        signer = security_services.configure(settings)
        made = security_services.checkpoint(open_storage(settings), CLI_SCOPE, signer)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo("nothing to sign: the audit log is empty" if made is None else f"checkpoint #{made.seq} signed")


@audit.command("public-key")
def public_key() -> None:
    """Print the audit signing key's public half (PEM), to keep away from the database."""
    from openami.security.audit_keys import public_key_pem  # noqa: PLC0415 - only this command needs it

    try:
        signer = security_services.configure(Settings())
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(public_key_pem(signer).decode("ascii"), nl=False)


@click.group()
def security() -> None:
    """Security events (meter- and API-side failures) and the alerts their bursts open."""


@security.command()
@click.option("--kind", help='e.g. "meter.bad-tag"')
@click.option("--meter", "meter_id", type=click.IntRange(1))
@click.option("--actor")
@click.option("--since", help="ISO 8601 (UTC if no zone)")
@click.option("--until", help="ISO 8601 (UTC if no zone)")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, security_services.MAX_PAGE))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def events(**options: Any) -> None:
    """Security events, newest first."""
    as_json = options.pop("as_json")
    options["since"] = _iso(options["since"], "--since")
    options["until"] = _iso(options["until"], "--until")
    try:
        found = security_services.security_events(open_storage(Settings()), CLI_SCOPE, **options)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(_as_json(found))
        return
    table = Table(title=f"security events ({len(found)})")
    for column in ("id", "at", "kind", "meter", "actor", "alert", "details"):
        table.add_column(column)
    for e in found:
        table.add_row(
            str(e.id), e.occurred_at.isoformat(timespec="seconds"), e.kind, str(e.meter_id or ""), e.actor or "",
            str(e.alert_id or ""), json.dumps(e.details, ensure_ascii=False, sort_keys=True) if e.details else "",
        )  # fmt: skip
    Console().print(table)


@security.command()
@click.option("--state", type=click.Choice(["open", "acknowledged", "closed"]))
@click.option("--kind")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, security_services.MAX_PAGE))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def alerts(state: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """Alerts, newest first."""
    try:
        found = security_services.security_alerts(
            open_storage(Settings()),
            CLI_SCOPE,
            state=state,
            kind=kind,
            limit=limit,
        )
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(_as_json(found))
        return
    table = Table(title=f"security alerts ({len(found)})")
    for column in ("id", "state", "kind", "scope", "events", "opened", "last event", "acknowledged by"):
        table.add_column(column)
    for a in found:
        table.add_row(
            str(a.id), a.state, a.kind, a.scope, f"{a.event_count} (≥{a.threshold}/{a.window_s}s)",
            a.opened_at.isoformat(timespec="seconds"), a.last_event_at.isoformat(timespec="seconds"),
            a.acknowledged_by or "",
        )  # fmt: skip
    Console().print(table)


@security.command()
@click.argument("alert_id", type=click.IntRange(1))
@click.option("--close", "close_it", is_flag=True, help="close the alert instead of acknowledging it")
def ack(alert_id: int, close_it: bool) -> None:
    """Acknowledge (or --close) alert ALERT_ID."""
    change = security_services.close_alert if close_it else security_services.acknowledge_alert
    try:
        alert = change(open_storage(Settings()), CLI_SCOPE, alert_id)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"alert {alert.id} is {alert.state}")
