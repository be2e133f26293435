"""``openami keys``: rotate meter keys (one meter, a feeder, every meter; emergency re-key) and show their state.

Like the other local administration commands it works on the database and the master key directly
(actor ``cli:local-admin``) and talks to the meters itself. Exit status of ``rotate``: 0 every meter
rotated, 3 some are still pending or uncertain (a later ``openami keys rotate --retry``, or the next
read, finishes them), 1 some failed. Keys are never printed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from openami import logging as oam_logging
from openami.errors import OpenAmiError
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import keys as key_services
from openami.services.bootstrap import build_platform, open_storage, stop_platform
from openami.services.context import Platform
from openami.settings import Settings

CLI_SCOPE = RequestScope(
    principal="cli:local-admin", roles=frozenset({Role.SECURITY_ADMIN}), scopes=frozenset({ALL_SCOPES})
)
_err = Console(stderr=True)
_STATES = ("rotated", "pending", "uncertain", "failed", "cancelled")


@click.group()
def keys() -> None:
    """Meter keys: rotate them through the meters' Security Setup key transfer, see their state."""


@keys.command()
@click.option("--meter", "meter_ids", type=click.IntRange(1), multiple=True, help="a meter id (repeatable)")
@click.option("--feeder", "feeder_id", help="every meter on this feeder")
@click.option("--all", "all_meters", is_flag=True, help="every meter")
@click.option("--emergency", is_flag=True, help="keys believed compromised: before any other rotation")
@click.option("--retry", is_flag=True, help="no new request: attempt every rotation still pending or uncertain")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def rotate(
    meter_ids: tuple[int, ...], feeder_id: str | None, all_meters: bool, emergency: bool, retry: bool, as_json: bool
) -> None:
    """Rotate the GUEK and GAK of --meter ID.../--feeder ID/--all (or --retry the open ones)."""
    named = sum((bool(meter_ids), feeder_id is not None, all_meters))
    if named != (0 if retry else 1):
        raise click.UsageError("give exactly one of --meter, --feeder or --all (or --retry alone)")
    oam_logging.configure()  # log lines to stderr: stdout is the report
    settings = Settings()
    try:
        platform = build_platform(settings, engine=open_storage(settings))
        report = asyncio.run(_rotate(platform, meter_ids, feeder_id, all_meters, emergency))
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_summary(report)
    counts = report["counts"]
    raise SystemExit(1 if counts["failed"] else 3 if counts["pending"] or counts["uncertain"] else 0)


async def _rotate(
    platform: Platform, meter_ids: tuple[int, ...], feeder_id: str | None, all_meters: bool, emergency: bool
) -> dict[str, Any]:
    try:
        rotation_id = None
        if meter_ids or feeder_id is not None or all_meters:
            rotation_id = key_services.request_rotation(
                platform, CLI_SCOPE, meter_ids=meter_ids, feeder_id=feeder_id, all_meters=all_meters,
                emergency=emergency,
            )  # fmt: skip
        columns = (TextColumn("rotating keys"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=_err, transient=True) as bar:
            task = bar.add_task("rotate", total=key_services.open_count(platform, rotation_id))

            def advance(_rotation: object, _outcome: object) -> None:
                bar.advance(task)

            outcomes = await key_services.run_rotation(platform, rotation_id, progress=advance)
        if rotation_id is not None:
            report = key_services.rotation_report(platform, CLI_SCOPE, rotation_id)
            return {"rotation": report.id, "target": report.target, "counts": report.counts,
                    "meters": [_meter_json(m) for m in report.meters]}  # fmt: skip
        counts = {str(outcome): n for outcome, n in outcomes.items()}
        return {"rotation": None, "target": "open rotations", "counts": {**dict.fromkeys(_STATES, 0), **counts},
                "meters": []}  # fmt: skip
    finally:
        await stop_platform(platform)


def _meter_json(m: Any) -> dict[str, Any]:
    return {"meter_id": m.meter_id, "serial": m.serial, "state": m.state, "attempts": m.attempts,
            "last_error": m.last_error}  # fmt: skip


def _print_summary(report: dict[str, Any]) -> None:
    title = f"key rotation {report['rotation'] or ''} ({report['target']})".replace("  ", " ")
    table = Table(title=title)
    for state in _STATES:
        table.add_column(state, justify="right")
    table.add_row(*(str(report["counts"].get(state, 0)) for state in _STATES))
    Console().print(table)
    problems = [m for m in report["meters"] if m["state"] in ("failed", "pending", "uncertain")]
    if problems:
        detail = Table(title="meters not rotated")
        for column in ("meter", "serial", "state", "attempts", "last error"):
            detail.add_column(column)
        for m in problems[:50]:
            detail.add_row(str(m["meter_id"]), m["serial"], m["state"], str(m["attempts"]), m["last_error"] or "")
        Console().print(detail)


@keys.command()
@click.option("--meter", "meter_id", type=click.IntRange(1), help="one meter's key versions")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(meter_id: int | None, as_json: bool) -> None:
    """Key versions of --meter ID (kind, version, state; never the keys), or the recent rotations."""
    oam_logging.configure()
    settings = Settings()
    platform = None
    try:
        platform = build_platform(settings, engine=open_storage(settings))
        if meter_id is not None:
            _print_meter(key_services.key_status(platform, CLI_SCOPE, meter_id), as_json)
        else:
            _print_rotations(key_services.recent_rotations(platform, CLI_SCOPE), as_json)
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        if platform is not None:
            asyncio.run(stop_platform(platform))


def _print_meter(found: key_services.KeyStatus, as_json: bool) -> None:
    rotation = found.rotation
    if as_json:
        versions = [{"kind": v.kind, "version": v.version, "state": v.state, "created_at": v.created_at.isoformat()}
                    for v in found.versions]  # fmt: skip
        click.echo(json.dumps({"meter_id": found.meter_id, "serial": found.serial, "versions": versions,
                               "rotation": None if rotation is None else _meter_json(rotation)}, indent=2))  # fmt: skip
        return
    table = Table(title=f"keys of meter {found.meter_id} ({found.serial})")
    for column in ("kind", "version", "state", "created", "state since"):
        table.add_column(column)
    for v in found.versions:
        since = v.state_changed_at.isoformat(timespec="seconds") if v.state_changed_at else ""
        table.add_row(v.kind, str(v.version), v.state, v.created_at.isoformat(timespec="seconds"), since)
    Console().print(table)
    if rotation is not None:
        click.echo(f"newest rotation: {rotation.rotation_id} {rotation.state} after {rotation.attempts} attempt(s)"
                   + (f" ({rotation.last_error})" if rotation.last_error else ""))  # fmt: skip


def _print_rotations(found: list[key_services.RotationReport], as_json: bool) -> None:
    if as_json:
        rows = [{"id": r.id, "target": r.target, "emergency": r.emergency, "requested_by": r.requested_by,
                 "requested_at": r.requested_at.isoformat(), "counts": r.counts} for r in found]  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="key rotations (newest first)")
    for column in ("id", "target", "emergency", "requested by", "requested at", *_STATES):
        table.add_column(column)
    for r in found:
        table.add_row(str(r.id), r.target, "yes" if r.emergency else "", r.requested_by,
                      r.requested_at.isoformat(timespec="seconds"), *(str(r.counts[s]) for s in _STATES))  # fmt: skip
    Console().print(table)
