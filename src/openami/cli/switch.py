"""``openami switch``: signed disconnect, reconnect and load-limit commands, their status, the switch state.

Like ``openami keys`` it works on the database and the master key directly (actor ``cli:local-admin``,
role ami_operator) and talks to the meters itself: a command is submitted (policy, guard, counter,
signature and audit in one transaction), then this process runs the command queue until the command
is final or ``--timeout`` passes. With ``--no-wait`` it only submits: a running ``openami run`` takes
the command to the meter (either process may send it; a command is sent once, whichever takes it).

Exit status of the command subcommands: 0 confirmed, 1 failed, expired or cancelled, 3 not final yet
(still queued, awaiting approval, or sent without an answer so far).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from openami import logging as oam_logging
from openami.errors import OpenAmiError
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import switch as switch_services
from openami.services.bootstrap import build_platform, open_storage, stop_platform
from openami.services.context import Platform
from openami.services.switch import CommandRequest, CommandView, LimitParameters
from openami.settings import Settings

CLI_SCOPE = RequestScope(
    principal="cli:local-admin", roles=frozenset({Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES})
)
_err = Console(stderr=True)
_EXIT = {"confirmed": 0, "failed": 1, "expired": 1, "cancelled": 1}


@click.group()
def switch() -> None:
    """Supply switch and load limiter: signed commands to meters, their status, the switch state."""


def _iso(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date-time", param_hint="--at") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _command_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command subcommand shares."""
    options = [
        click.option("--at", "execute_at", help="when to act (ISO 8601; default now)"),
        click.option("--valid-for", "valid_for_s", type=click.IntRange(10), help="seconds the meter may still act"),
        click.option("--reason", default="operator request", show_default=True),
        click.option("--priority", default=0, show_default=True, type=click.IntRange(-1000, 1000)),
        click.option("--purpose", help="declared purpose (e.g. safety)"),
        click.option("--key", "idempotency_key", help="idempotency key: repeating the command returns the first one"),
        click.option("--no-wait", is_flag=True, help="only submit; a running platform sends it"),
        click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(0.1, 3600)),
        click.option("--json", "as_json", is_flag=True, help="print the command as JSON"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _platform() -> Platform:
    oam_logging.configure()  # log lines to stderr: stdout is the result
    settings = Settings()
    return build_platform(settings, engine=open_storage(settings))


def _submit_and_wait(request: CommandRequest, options: dict[str, Any]) -> None:
    try:
        view = asyncio.run(_run(_platform(), request, options))
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    _print(view, as_json=options["as_json"])
    raise SystemExit(_EXIT.get(view.status, 3))


async def _run(platform: Platform, request: CommandRequest, options: dict[str, Any]) -> CommandView:
    try:
        if not options["no_wait"]:
            switch_services.start_queue(platform)
        view = switch_services.submit(platform, CLI_SCOPE, request, idempotency_key=options["idempotency_key"])
        if options["no_wait"]:
            return view
        with _err.status(f"command {view.id}: {view.command} meter {view.meter_id}..."):
            return await switch_services.wait_for(platform, view.id, options["timeout_s"])
    finally:
        await switch_services.stop_queue(platform)
        await stop_platform(platform)


def _request(
    meter_id: int, command: str, options: dict[str, Any], limit: LimitParameters | None = None
) -> CommandRequest:
    return CommandRequest(
        meter_id=meter_id,
        command=command,
        execute_at=_iso(options["execute_at"]),
        valid_for_s=options["valid_for_s"],
        limit=limit,
        reason=options["reason"],
        priority=options["priority"],
        purpose=options["purpose"],
    )


@switch.command()
@click.argument("meter_id", type=click.IntRange(1))
@_command_options
def disconnect(meter_id: int, **options: Any) -> None:
    """Open METER_ID's supply switch (the final registers are read once it is open)."""
    _submit_and_wait(_request(meter_id, "disconnect", options), options)


@switch.command()
@click.argument("meter_id", type=click.IntRange(1))
@click.option("--armed", is_flag=True, help="only arm the switch: the customer closes it with the button")
@_command_options
def reconnect(meter_id: int, armed: bool, **options: Any) -> None:
    """Close METER_ID's supply switch now (or --armed: ready for the customer to close it)."""
    _submit_and_wait(_request(meter_id, "reconnect-arm" if armed else "reconnect", options), options)


@switch.command()
@click.argument("meter_id", type=click.IntRange(1))
@click.option("--threshold", "threshold_w", required=True, type=click.IntRange(1), help="watts")
@click.option("--duration", "duration_s", required=True, type=click.IntRange(1), help="seconds above it before a trip")
@click.option("--emergency", is_flag=True, help="the emergency threshold (emergency profile)")
@_command_options
def limit(meter_id: int, threshold_w: int, duration_s: int, emergency: bool, **options: Any) -> None:
    """Set METER_ID's load limit: the switch opens when demand stays above it."""
    parameters = LimitParameters(threshold_w, duration_s, emergency)
    _submit_and_wait(_request(meter_id, "limit", options, parameters), options)


@switch.command("cancel-limit")
@click.argument("meter_id", type=click.IntRange(1))
@_command_options
def cancel_limit(meter_id: int, **options: Any) -> None:
    """Remove METER_ID's load limit."""
    _submit_and_wait(_request(meter_id, "cancel-limit", options), options)


@switch.command()
@click.argument("meter_id", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
def state(meter_id: int, as_json: bool) -> None:
    """Ask METER_ID now: switch state and mode, active limit, voltage, current, power."""

    async def read(platform: Platform) -> switch_services.SwitchStateView:
        try:
            return await switch_services.read_state(platform, CLI_SCOPE, meter_id)
        finally:
            await stop_platform(platform)

    try:
        view = asyncio.run(read(_platform()))
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    data = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(view).items()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"meter {meter_id}: switch state", show_header=False)
    for name, value in data.items():
        table.add_row(name, "" if value is None else str(value))
    Console().print(table)


@switch.command()
@click.argument("command_id", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
def status(command_id: int, as_json: bool) -> None:
    """One command: its status, failure reason and the meter's confirmation."""
    try:
        platform = build_platform(Settings(), engine=open_storage(Settings()))
        view = switch_services.get_command(platform, CLI_SCOPE, command_id)
        platform.engine.dispose()
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    _print(view, as_json=as_json)
    raise SystemExit(_EXIT.get(view.status, 3))


@switch.command("list")
@click.option("--meter", "meter_id", type=click.IntRange(1))
@click.option("--status", "status_", type=click.Choice(["awaiting-approval", "queued", "sent", "confirmed", "failed",
                                                         "expired", "cancelled"]))  # fmt: skip
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
def list_(meter_id: int | None, status_: str | None, limit: int, as_json: bool) -> None:
    """Commands, newest first."""
    try:
        platform = build_platform(Settings(), engine=open_storage(Settings()))
        views = switch_services.list_commands(platform, CLI_SCOPE, meter_id=meter_id, status=status_, limit=limit)
        platform.engine.dispose()
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps([_json(v) for v in views], indent=2))
        return
    table = Table(title=f"commands ({len(views)})")
    for column in ("id", "meter", "command", "status", "counter", "execute at", "attempts", "reason / failure"):
        table.add_column(column)
    for v in views:
        table.add_row(str(v.id), str(v.meter_id), v.command, v.status, str(v.counter), v.execute_at.isoformat(),
                      str(v.attempts), v.failure_reason or v.reason)  # fmt: skip
    Console().print(table)


@switch.command()
@click.argument("command_id", type=click.IntRange(1))
def cancel(command_id: int) -> None:
    """Cancel a command that has not been sent yet."""
    try:
        platform = build_platform(Settings(), engine=open_storage(Settings()))
        view = switch_services.cancel_command(platform, CLI_SCOPE, command_id, reason="cancelled by cli:local-admin")
        platform.engine.dispose()
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"command {view.id} cancelled")


def _json(view: CommandView) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(view).items()}


def _print(view: CommandView, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_json(view), indent=2))
        return
    table = Table(title=f"command {view.id}: {view.command} meter {view.meter_id} — {view.status}", show_header=False)
    for name, value in _json(view).items():
        if value is not None:
            table.add_row(name, str(value))
    Console().print(table)
