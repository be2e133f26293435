"""``openami outages list|show``, ``openami topology import FILE``, ``openami webhooks add|list|remove``.

Like the other local administration commands they work on the database (and the master key, for
webhook secrets) directly, as ``cli:local-admin``. A running platform's outage engine picks up a new
topology at its next decision (a last gasp from a meter it does not know reloads the grid).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from openami.cli.local import local_platform, run_local
from openami.cli.platform import CLI_SCOPE
from openami.services import outage_feed, topology
from openami.services import webhooks as webhook_services

T = TypeVar("T")
_err = Console(stderr=True)


def _when(value: Any) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


# -- outages --------------------------------------------------------------------------------------------


@click.group()
def outages() -> None:
    """Outages located from last gasps: list them, show one with its meters and restoration list."""


def _outage_json(o: Any) -> dict[str, Any]:
    return {
        "id": o.id, "device": f"{o.device_kind}:{o.device_id}", "area": o.area, "parent_id": o.parent_id,
        "state": str(o.state), "started_at": _when(o.started_at), "restored_at": _when(o.restored_at),
        "meters": o.meters, "premises": o.premises, "critical_care": o.critical_care, "last_gasps": o.last_gasps,
        "still_dark": o.still_dark, "version": o.version,
    }  # fmt: skip


@outages.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(outage_feed.STATES), help="repeatable")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def list_outages(states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Outages, newest first."""
    found = run_local(lambda p: outage_feed.list_outages(p, CLI_SCOPE, states=states, limit=limit))
    if as_json:
        click.echo(json.dumps([_outage_json(o) for o in found], indent=2))
        return
    table = Table(title=f"outages ({len(found)})")
    for column in ("id", "device", "state", "started", "restored", "meters", "premises", "critical care", "still dark"):
        table.add_column(column)
    for o in found:
        row = _outage_json(o)
        table.add_row(
            str(o.id), row["device"], row["state"], row["started_at"], row["restored_at"], str(o.meters),
            str(o.premises), str(o.critical_care), str(o.still_dark),
        )  # fmt: skip
    Console().print(table)


@outages.command("show")
@click.argument("outage_id", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show_outage(outage_id: int, as_json: bool) -> None:
    """One outage: its affected meters, the restoration list, nested outages and notes."""
    detail = run_local(lambda p: outage_feed.get_outage(p, CLI_SCOPE, outage_id))
    body = _outage_json(detail.outage) | {
        "restoration_list": detail.still_dark,
        "children": detail.children,
        "notes": [{"at": _when(n.at), "actor": n.actor, "text": n.text} for n in detail.notes],
        "meters": [{"meter_id": m.meter_id, "state": m.state, "last_gasp": m.last_gasp,
                    "critical_care": m.critical_care, "restored_by": m.restored_by} for m in detail.meters],
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    console = Console()
    summary = Table(title=f"outage {outage_id}", show_header=False)
    for key in ("device", "area", "state", "started_at", "restored_at", "meters", "premises", "critical_care",
                "last_gasps", "still_dark", "parent_id", "children"):  # fmt: skip
        summary.add_row(key, str(body[key]))
    console.print(summary)
    if detail.still_dark:
        console.print(f"[bold]still dark after restoration[/]: {', '.join(map(str, detail.still_dark))}")
    for note in detail.notes:
        console.print(f"{_when(note.at)} {note.actor}: {note.text}")


# -- topology -------------------------------------------------------------------------------------------


@click.group("topology")
def topology_group() -> None:
    """The grid topology: substations, feeders, transformers, service points and their meters."""


@topology_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "geojson"]), help="default: from the file name")
def import_topology(path: Path, fmt: str | None) -> None:
    """Replace the grid with FILE (CSV or GeoJSON); a file with problems changes nothing and each is listed."""
    chosen = fmt or ("geojson" if path.suffix.lower() in (".geojson", ".json") else "csv")
    data = path.read_bytes()
    with local_platform() as platform:
        try:
            summary = topology.import_topology(platform, CLI_SCOPE, data, fmt=chosen, source=path.name)
        except topology.TopologyRejected as exc:
            _err.print(f"[bold red]{path} rejected[/], nothing changed ({len(exc.problems)} problems):")
            for problem in exc.problems:
                _err.print(f"  {problem}")
            raise SystemExit(1) from None
    for line in topology.summary_lines(summary):
        click.echo(line)


# -- webhooks -------------------------------------------------------------------------------------------


@click.group()
def webhooks() -> None:
    """Systems notified of every outage change (signed JSON POSTs)."""


@webhooks.command("add")
@click.argument("name")
@click.argument("url")
def add_webhook(name: str, url: str) -> None:
    """Register URL; prints the signing secret once (store it in the receiver, it is never shown again)."""
    made = run_local(lambda p: webhook_services.register(p, CLI_SCOPE, name=name, url=url))
    click.echo(f"webhook {made.webhook.id} ({made.webhook.name}) → {made.webhook.url}")
    click.echo(f"signing secret (shown once): {made.secret}")


@webhooks.command("list")
def list_webhooks() -> None:
    """Registered endpoints."""
    found = run_local(lambda p: webhook_services.list_webhooks(p, CLI_SCOPE))
    table = Table(title=f"webhooks ({len(found)})")
    for column in ("id", "name", "url", "created by", "created"):
        table.add_column(column)
    for w in found:
        table.add_row(str(w.id), w.name, w.url, w.created_by, _when(w.created_at))
    Console().print(table)


@webhooks.command("remove")
@click.argument("webhook_id", type=click.IntRange(1))
def remove_webhook(webhook_id: int) -> None:
    """Stop notifying an endpoint."""
    run_local(lambda p: webhook_services.remove(p, CLI_SCOPE, webhook_id))
    click.echo(f"webhook {webhook_id} removed")
