"""``openami events list``: stored meter events (last gasps, restorations, tamper, voltage, switch)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from openami.cli.platform import CLI_SCOPE
from openami.errors import OpenAmiError
from openami.services import events as event_services
from openami.services.bootstrap import open_storage
from openami.settings import Settings


def _iso(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date-time", param_hint=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.group()
def events() -> None:
    """Meter events and alarms from pushes and event logs."""


@events.command("list")
@click.option("--meter", "meter_id", type=click.IntRange(1), help="one meter's events")
@click.option("--code", "codes", multiple=True, help="event name or number (repeatable), e.g. power-down")
@click.option("--category", "categories", multiple=True, help="power, voltage, tamper, switch, clock, comms, security")
@click.option("--since", help="meter time from, ISO 8601 (default: 7 days ago)")
@click.option("--until", help="meter time to, ISO 8601 (default: no bound)")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, event_services.MAX_LIMIT))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def list_events(
    meter_id: int | None,
    codes: tuple[str, ...],
    categories: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List stored events, newest meter time first."""
    start = _iso(since, "--since") if since else datetime.now(UTC) - timedelta(days=7)
    end = _iso(until, "--until") if until else None
    try:
        engine = open_storage(Settings())
        try:
            found = event_services.list_events(
                engine,
                CLI_SCOPE,
                meter_id=meter_id,
                codes=event_services.parse_codes(codes),
                categories=event_services.parse_categories(categories),
                since=start,
                until=end,
                limit=limit,
            )
        finally:
            engine.dispose()
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps([_event_json(e) for e in found], indent=2))
        return
    table = Table(title=f"meter events ({len(found)}, newest first)")
    for column in ("meter time", "meter", "event", "category", "value", "source", "received"):
        table.add_column(column)
    for e in found:
        table.add_row(
            e.meter_time.isoformat(), str(e.meter_id), e.code, e.category, "" if e.value is None else f"{e.value:g}",
            e.source, e.received_at.isoformat(timespec="seconds"),
        )  # fmt: skip
    Console().print(table)


def _event_json(e: event_services.EventView) -> dict[str, Any]:
    return {
        "id": e.id,
        "meter_id": e.meter_id,
        "code": e.code,
        "code_number": e.code_number,
        "category": e.category,
        "meter_time": e.meter_time.isoformat(),
        "received_at": e.received_at.isoformat(),
        "source": e.source,
        "value": e.value,
    }
