"""``openami cases`` and ``openami balance``: revenue-protection cases, the watch list, scans, energy balance.

Like the other local administration commands they work on the database directly, as the actor
``cli:local-admin`` with the AMI operator's role (``cases.read``, ``cases.manage``); every change is
audited. Errors print a message and exit 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from openami.cli.local import run_local
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import revenue
from openami.services.context import Platform

CLI_SCOPE = RequestScope(
    principal="cli:local-admin", roles=frozenset({Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES})
)
_STATES = click.Choice(list(revenue.CASE_STATES))
T = TypeVar("T")


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group()
def cases() -> None:
    """Revenue-protection cases (open → investigating → confirmed-theft | no-fault → closed) and scans."""


@cases.command("list")
@click.option("--state", type=_STATES, help="only cases in this state")
@click.option("--meter", "meter_id", type=click.IntRange(1), help="only this meter's cases")
@click.option("--transformer", "transformer_id", help="only this transformer's cases")
@click.option("--limit", type=click.IntRange(1, revenue.MAX_LIST), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_cases(state: str | None, meter_id: int | None, transformer_id: str | None, limit: int, as_json: bool) -> None:
    """List cases by id."""
    found = run_local(
        lambda p: revenue.list_cases(
            p, CLI_SCOPE, state=state, meter_id=meter_id, transformer_id=transformer_id, limit=limit
        )
    )
    if as_json:
        _echo_json([asdict(c) for c in found])
        return
    table = Table(title="revenue-protection cases")
    for column in ("id", "meter", "transformer", "state", "reason", "assignee", "opened", "summary"):
        table.add_column(column)
    for c in found:
        table.add_row(
            str(c.id), str(c.meter_id or ""), c.transformer_id or "", c.state, c.reason, c.assignee or "",
            _time(c.opened_at), c.summary,
        )  # fmt: skip
    Console().print(table)


def _print_detail(detail: revenue.CaseDetail, as_json: bool) -> None:
    if as_json:
        _echo_json({**asdict(detail.case), "history": [asdict(h) for h in detail.history]})
        return
    c = detail.case
    subject = f"meter {c.meter_id}" if c.meter_id is not None else f"transformer {c.transformer_id}"
    click.echo(f"case {c.id} ({subject}): {c.state}, {c.reason}; assignee {c.assignee or '-'}")
    click.echo(f"  {c.summary}")
    table = Table(title="history")
    for column in ("at", "actor", "kind", "change", "text"):
        table.add_column(column)
    for h in detail.history:
        change = f"{h.from_state or ''} → {h.to_state}" if h.to_state else ""
        table.add_row(_time(h.at), h.actor, h.kind, change, h.text or "")
    Console().print(table)


@cases.command()
@click.argument("case_id", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show(case_id: int, as_json: bool) -> None:
    """Show a case and its history."""
    _print_detail(run_local(lambda p: revenue.get_case(p, CLI_SCOPE, case_id)), as_json)


@cases.command()
@click.argument("case_id", type=click.IntRange(1))
@click.argument("state", type=_STATES)
@click.option("--note", help="why (kept in the history)")
def move(case_id: int, state: str, note: str | None) -> None:
    """Move case CASE_ID to STATE (only the transitions the state machine allows)."""
    _print_detail(run_local(lambda p: revenue.move_case(p, CLI_SCOPE, case_id, state, note=note)), False)


@cases.command()
@click.argument("case_id", type=click.IntRange(1))
@click.argument("text")
def note(case_id: int, text: str) -> None:
    """Add a note to case CASE_ID."""
    _print_detail(run_local(lambda p: revenue.add_note(p, CLI_SCOPE, case_id, text)), False)


@cases.command()
@click.argument("case_id", type=click.IntRange(1))
@click.argument("assignee", required=False)
def assign(case_id: int, assignee: str | None) -> None:
    """Assign case CASE_ID to ASSIGNEE (none given: unassign)."""
    _print_detail(run_local(lambda p: revenue.assign_case(p, CLI_SCOPE, case_id, assignee)), False)


@cases.command()
@click.option("--rule", type=click.Choice(list(revenue.RULES)), help="only this rule's entries")
@click.option("--all", "include_cleared", is_flag=True, help="include cleared entries")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def watch(rule: str | None, include_cleared: bool, as_json: bool) -> None:
    """Meters (and transformers) to be watched, newest first."""
    found = run_local(lambda p: revenue.watch_list(p, CLI_SCOPE, rule=rule, include_cleared=include_cleared))
    if as_json:
        _echo_json([asdict(w) for w in found])
        return
    table = Table(title="to be watched")
    for column in ("meter", "transformer", "rule", "since", "case", "evidence"):
        table.add_column(column)
    for w in found:
        evidence = ", ".join(f"{k}={v}" for k, v in w.evidence.items())
        table.add_row(
            str(w.meter_id or ""), w.transformer_id or "", w.rule, _time(w.since), str(w.case_id or ""), evidence
        )
    Console().print(table)


@cases.command()
@click.option("--meter", "meter_ids", type=click.IntRange(1), multiple=True, help="a meter to scan (default: all)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def scan(meter_ids: tuple[int, ...], as_json: bool) -> None:
    """Run the anomaly rules and the transformer energy balances now."""
    summary = run_local(lambda p: revenue.scan(p, CLI_SCOPE, meter_ids=list(meter_ids) or None))
    flagged = [b.transformer_id for b in summary.balances if b.flagged]
    result = {"meters": summary.meters, "transformers": summary.transformers, "findings": summary.findings,
              "new_watch": summary.new_watch, "cleared_watch": summary.cleared_watch,
              "flagged_transformers": flagged, "cases_opened": summary.cases_opened}  # fmt: skip
    if as_json:
        _echo_json(result)
        return
    table = Table(title=f"scan of {summary.meters} meters and {summary.transformers} transformers")
    table.add_column("rule")
    table.add_column("meters", justify="right")
    for rule, count in summary.findings.items():
        table.add_row(rule, str(count))
    table.add_row("energy-balance (transformers)", str(len(flagged)))
    Console().print(table)
    click.echo(
        f"new watch entries {summary.new_watch}, cleared {summary.cleared_watch}, cases opened {summary.cases_opened}"
    )


@cases.command()
@click.argument("premise_id")
@click.option("--vacant/--occupied", default=None, help="flag the premise vacant (or occupied again)")
@click.option("--generation/--no-generation", default=None, help="the premise has registered generation")
def premise(premise_id: str, vacant: bool | None, generation: bool | None) -> None:
    """Set the flags of PREMISE_ID that the rules read (vacant, registered generation)."""
    flags = run_local(
        lambda p: revenue.set_premise_flags(p, CLI_SCOPE, premise_id, vacant=vacant, has_generation=generation)
    )
    since = f" since {_time(flags.vacant_since)}" if flags.vacant else ""
    click.echo(f"premise {flags.premise_id}: {'vacant' if flags.vacant else 'occupied'}{since}, "
               f"{'with' if flags.has_generation else 'no'} registered generation")  # fmt: skip


@click.command()
@click.argument("transformer_id")
@click.option("--days", type=click.FloatRange(0.25, 92), help="period length (default: the configured balance days)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def balance(transformer_id: str, days: float | None, as_json: bool) -> None:
    """Energy balance of TRANSFORMER_ID: its check meter against the sum of its meters (computed now)."""

    def compute(platform: Platform) -> revenue.Balance:
        now = platform.now()
        start = None if days is None else datetime.fromtimestamp(now.timestamp() - days * 86_400, UTC)
        return revenue.energy_balance(platform, CLI_SCOPE, transformer_id, start=start)

    b = run_local(compute)
    if as_json:
        _echo_json(asdict(b))
        return
    first, last = (_time(datetime.fromtimestamp(e, UTC)) for e in (b.period_start, b.period_end))
    share = "n/a" if b.loss_share is None else f"{b.loss_share:.2%}"
    verdict = "FLAGGED" if b.flagged else "ok"
    click.echo(f"transformer {b.transformer_id}, check meter {b.check_meter_id}, {b.meters} meters, {first} to {last}")
    click.echo(f"  {b.intervals} complete quarter-hours: check {b.check_wh:.0f} Wh, meters {b.meters_wh:.0f} Wh, "
               f"loss {b.loss_wh:.0f} Wh ({share}, tolerance {b.tolerance:.0%}): {verdict}")  # fmt: skip
    if b.missing_meters:
        click.echo(f"  meters with no stored value in the period: {', '.join(map(str, b.missing_meters))}")
    if b.suspects:
        table = Table(title="most likely meters (consumption dropped)")
        for column in ("meter", "before Wh/15 min", "period Wh/15 min", "drop"):
            table.add_column(column)
        for s in b.suspects:
            table.add_row(str(s.meter_id), f"{s.baseline_wh:.1f}", f"{s.period_wh:.1f}", f"{s.drop_share:.0%}")
        Console().print(table)
