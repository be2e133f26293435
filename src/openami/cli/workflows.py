"""``openami workflow``: move-in, move-out, non-payment disconnect, reinstatement, load shedding, limits.

Each command starts the platform's command queue in this process, runs the workflow to its end and
prints its steps. Exit status: 0 completed, 1 failed (the failed step and the reason are printed),
2 refused before it started (critical care, the calendar, the policy). The actor is
``cli:<operating-system user>`` with the operator's and the billing clerk's rights.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Callable
from datetime import datetime

import click
from rich.console import Console
from rich.table import Table

from openami import logging as oam_logging
from openami.errors import OpenAmiError
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import workflows as workflow_services
from openami.services.bootstrap import build_platform, open_storage, start_platform, stop_platform
from openami.services.context import Platform
from openami.services.workflows import ShedTarget, Workflow
from openami.settings import Settings

Starter = Callable[[Platform, RequestScope], int]


def cli_scope() -> RequestScope:
    roles = frozenset({Role.AMI_OPERATOR, Role.BILLING_CIS})
    return RequestScope(principal=f"cli:{getpass.getuser()}"[:128], roles=roles, scopes=frozenset({ALL_SCOPES}))


async def _run(settings: Settings, start: Starter) -> Workflow:
    platform = build_platform(settings, engine=open_storage(settings))
    try:
        workflow_id = start(platform, cli_scope())  # refusals (policy, critical care, calendar) before any start
        click.echo(f"workflow {workflow_id} started", err=True)
        await start_platform(platform)
        return await workflow_services.run(platform, workflow_id)
    finally:
        await stop_platform(platform)


def _execute(start: Starter, as_json: bool) -> None:
    oam_logging.configure()  # log lines to stderr: stdout is the report
    try:
        workflow = asyncio.run(_run(Settings(), start))
    except OpenAmiError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        raise SystemExit(2) from None
    _print(workflow, as_json)
    raise SystemExit(0 if workflow.state == "completed" else 1)


def _print(w: Workflow, as_json: bool) -> None:
    if as_json:
        steps = [{"step": s.step, "outcome": s.outcome, "detail": s.detail, "command_id": s.command_id,
                  "at": s.at.isoformat()} for s in w.steps]  # fmt: skip
        click.echo(json.dumps({"id": w.id, "kind": w.kind, "target": w.target, "state": w.state,
                               "failure_step": w.failure_step, "failure_reason": w.failure_reason, "steps": steps},
                              indent=2))  # fmt: skip
        return
    table = Table(title=f"workflow {w.id}: {w.kind} {w.target} - {w.state}")
    for column in ("step", "outcome", "detail", "command"):
        table.add_column(column)
    for s in w.steps:
        table.add_row(s.step, s.outcome, s.detail, "" if s.command_id is None else str(s.command_id))
    Console().print(table)
    if w.failure_reason:
        click.echo(f"failed at {w.failure_step}: {w.failure_reason}", err=True)


_json = click.option("--json", "as_json", is_flag=True, help="print the workflow as JSON")
_meter = click.option("--meter", "meter_id", type=click.IntRange(1), required=True, help="the meter id")


@click.group()
def workflow() -> None:
    """Switch workflows with their steps: move-in, move-out, non-payment, reinstate, shed, restore, limit."""


@workflow.command("move-in")
@_meter
@_json
def move_in(meter_id: int, as_json: bool) -> None:
    """Read, check for backfeed, reconnect, verify, confirm."""
    _execute(lambda p, s: workflow_services.start_move_in(p, s, meter_id), as_json)


@workflow.command("move-out")
@_meter
@click.option("--at", "execute_at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z"]),
              help="when to disconnect (ISO 8601 with zone); now if absent")  # fmt: skip
@_json
def move_out(meter_id: int, execute_at: datetime | None, as_json: bool) -> None:
    """Disconnect at a set time, verify, final read."""
    _execute(lambda p, s: workflow_services.start_move_out(p, s, meter_id, execute_at=execute_at), as_json)


@workflow.command("non-payment")
@_meter
@_json
def non_payment(meter_id: int, as_json: bool) -> None:
    """Disconnect for non-payment (never critical care, never when the calendar forbids it)."""
    _execute(lambda p, s: workflow_services.start_non_payment(p, s, meter_id), as_json)


@workflow.command()
@_meter
@click.option("--arm", is_flag=True, help="arm the switch for the customer to close")
@_json
def reinstate(meter_id: int, arm: bool, as_json: bool) -> None:
    """Reconnect after payment, verify."""
    _execute(lambda p, s: workflow_services.start_reinstate(p, s, meter_id, arm=arm), as_json)


@workflow.command()
@_meter
@click.option("--threshold-w", type=click.IntRange(1, 10_000_000), required=True)
@click.option("--duration-s", type=click.IntRange(1, 86_400), required=True)
@click.option("--emergency", is_flag=True)
@_json
def limit(meter_id: int, threshold_w: int, duration_s: int, emergency: bool, as_json: bool) -> None:
    """Limited demand: a limit with threshold and duration, verified."""

    def start(p: Platform, s: RequestScope) -> int:
        return workflow_services.start_limit(p, s, meter_id, threshold_w=threshold_w, duration_s=duration_s,
                                             emergency=emergency)  # fmt: skip

    _execute(start, as_json)


@workflow.command()
@click.option("--meter", "meter_ids", type=click.IntRange(1), multiple=True, help="a meter id (repeatable)")
@click.option("--feeder", "feeder_id")
@click.option("--transformer", "transformer_id")
@click.option("--area")
@click.option("--mode", type=click.Choice(["limit", "disconnect"]), required=True)
@click.option("--threshold-w", type=click.IntRange(1, 10_000_000), help="for --mode limit")
@click.option("--duration-s", type=click.IntRange(1, 86_400), default=3600, show_default=True)
@click.option("--reason", required=True)
@_json
def shed(  # noqa: PLR0913, PLR0917 - one option each (click passes them by name)
    meter_ids: tuple[int, ...], feeder_id: str | None, transformer_id: str | None, area: str | None, mode: str,
    threshold_w: int | None, duration_s: int, reason: str, as_json: bool,
) -> None:  # fmt: skip
    """Emergency load shedding of meters, a feeder, a transformer or an area; critical care never shed."""
    target = ShedTarget(meter_ids=meter_ids, feeder_id=feeder_id, transformer_id=transformer_id, area=area)
    _execute(lambda p, s: workflow_services.start_shed(p, s, target, mode=mode, threshold_w=threshold_w,
                                                       duration_s=duration_s, reason=reason), as_json)  # fmt: skip


@workflow.command()
@click.argument("shed_id", type=click.IntRange(1))
@_json
def restore(shed_id: int, as_json: bool) -> None:
    """Reconnect (or cancel the limit of) every meter shed by workflow SHED_ID."""
    _execute(lambda p, s: workflow_services.start_restore(p, s, shed_id), as_json)


@workflow.command()
@click.argument("workflow_id", type=click.IntRange(1))
@_json
def show(workflow_id: int, as_json: bool) -> None:
    """One workflow and its steps."""
    oam_logging.configure()
    settings = Settings()
    try:
        platform = build_platform(settings, engine=open_storage(settings))
        try:
            found = workflow_services.get_workflow(platform, cli_scope(), workflow_id)
        finally:
            platform.engine.dispose()
    except OpenAmiError as exc:
        raise click.ClickException(exc.message) from None
    _print(found, as_json)
