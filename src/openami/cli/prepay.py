"""``openami prepay``: tariffs, enrolment, payments, adjustments, balances, the ledger, alerts, reconciliation.

Like the other local administration commands it works on the database directly, as ``cli:local-admin``
with the billing role. Amounts are decimal strings in major units ("12.50"). A payment that brings a
disconnected supply back above the reconnect threshold queues the reconnect command (the running
platform's command queue sends it). Bad input is a message and exit status 1; nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from openami.cli.local import run_local
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import prepay as prepay_services
from openami.services import prepay_reconcile

CLI_SCOPE = RequestScope(
    principal="cli:local-admin", roles=frozenset({Role.BILLING_CIS}), scopes=frozenset({ALL_SCOPES})
)
T = TypeVar("T")


def _json(rows: Sequence[Any]) -> None:
    click.echo(json.dumps([asdict(r) for r in rows], indent=2, default=str))


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for row in rows:
        table.add_row(*("" if v is None else v.isoformat(timespec="seconds") if isinstance(v, datetime) else str(v)
                        for v in row))  # fmt: skip
    Console().print(table)


_NUMERIC = {"id", "meter", "balance", "amount", "balance after", "kWh", "seq", "price/kWh", "standing/day",
            "account", "register Wh", "debited Wh", "difference Wh", "intervals"}  # fmt: skip


@click.group()
def prepay() -> None:
    """Prepayment: tariffs, accounts, payments (top-ups), adjustments, the credit ledger, alerts, reconciliation."""


@prepay.group()
def tariff() -> None:
    """Tariffs: price per kWh and standing charge per day (immutable once defined)."""


@tariff.command("add")
@click.argument("code")
@click.option("--name", required=True)
@click.option("--currency", required=True, help="ISO 4217, e.g. EUR")
@click.option("--price", "price_per_kwh", required=True, help="per kWh, e.g. 0.2519")
@click.option("--standing", "standing_charge_per_day", required=True, help="per day, e.g. 0.45")
def tariff_add(code: str, name: str, currency: str, price_per_kwh: str, standing_charge_per_day: str) -> None:
    """Define tariff CODE."""
    view = run_local(lambda p: prepay_services.define_tariff(
        p, CLI_SCOPE, code=code, name=name, currency=currency.upper(), price_per_kwh=price_per_kwh,
        standing_charge_per_day=standing_charge_per_day,
    ))  # fmt: skip
    click.echo(f"tariff {view.code} ({view.id}): {view.price_per_kwh} {view.currency}/kWh, "
               f"{view.standing_charge_per_day} {view.currency}/day")  # fmt: skip


@tariff.command("list")
@click.option("--json", "as_json", is_flag=True)
def tariff_list(as_json: bool) -> None:
    """Every tariff."""
    views = run_local(lambda p: prepay_services.list_tariffs(p, CLI_SCOPE))
    if as_json:
        _json(views)
        return
    _table("tariffs", ("id", "code", "name", "currency", "price/kWh", "standing/day"),
           [(t.id, t.code, t.name, t.currency, t.price_per_kwh, t.standing_charge_per_day) for t in views])  # fmt: skip


@prepay.command()
@click.option("--meter", "meter_id", type=click.IntRange(1), required=True)
@click.option("--tariff", "tariff_code", required=True)
@click.option("--low-credit", "low_credit_threshold", help="alert at or below this balance (default from settings)")
@click.option("--friendly-hours", help='e.g. "mon-sun 18:00-08:00; sat-sun" (default from settings)')
def enrol(meter_id: int, tariff_code: str, low_credit_threshold: str | None, friendly_hours: str | None) -> None:
    """Enrol a meter in prepayment (balance zero, supply connected)."""
    view = run_local(lambda p: prepay_services.enrol(
        p, CLI_SCOPE, meter_id=meter_id, tariff_code=tariff_code, low_credit_threshold=low_credit_threshold,
        friendly_hours=friendly_hours,
    ))  # fmt: skip
    click.echo(f"account {view.id}: meter {view.meter_id}, tariff {view.tariff_code}, {view.currency}")


def _accounts_table(views: Sequence[prepay_services.AccountView]) -> None:
    _table("prepayment accounts", ("id", "meter", "premise", "tariff", "balance", "currency", "credit", "supply",
                                   "last switch error"),
           [(a.id, a.meter_id, a.premise_id, a.tariff_code, a.balance, a.currency, a.credit_state, a.state,
             a.last_switch_error) for a in views])  # fmt: skip


@prepay.command()
@click.option("--state", type=click.Choice(["connected", "disconnected"]))
@click.option("--credit", "credit_state", type=click.Choice(["ok", "low", "zero"]))
@click.option("--meter", "meter_id", type=click.IntRange(1))
@click.option("--limit", type=click.IntRange(1, prepay_services.MAX_PAGE), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def accounts(state: str | None, credit_state: str | None, meter_id: int | None, limit: int, as_json: bool) -> None:
    """Accounts with their balances."""
    views = run_local(lambda p: prepay_services.list_accounts(
        p, CLI_SCOPE, state=state, credit_state=credit_state, meter_id=meter_id, limit=limit,
    ))  # fmt: skip
    if as_json:
        _json(views)
    else:
        _accounts_table(views)


def _entries_table(title: str, entries: Sequence[prepay_services.EntryView]) -> None:
    _table(title, ("seq", "at", "kind", "amount", "balance after", "kWh", "reference", "actor"),
           [(e.seq, e.at, e.kind, e.amount, e.balance_after, e.energy_kwh, e.reference, e.actor)
            for e in entries])  # fmt: skip


@prepay.command()
@click.argument("account_id", type=click.IntRange(1))
@click.option("--limit", type=click.IntRange(1, prepay_services.MAX_PAGE), default=20, show_default=True)
@click.option("--before", "before_seq", type=click.IntRange(1), help="entries older than this seq (paging)")
@click.option("--json", "as_json", is_flag=True)
def ledger(account_id: int, limit: int, before_seq: int | None, as_json: bool) -> None:
    """The ledger of ACCOUNT_ID, newest first."""
    entries = run_local(
        lambda p: prepay_services.get_ledger(p, CLI_SCOPE, account_id, limit=limit, before_seq=before_seq)
    )
    if as_json:
        _json(entries)
        return
    _entries_table(f"ledger of account {account_id}", entries)
    if len(entries) == limit and entries[-1].seq > 1:
        click.echo(f"older entries: --before {entries[-1].seq}")


def _print_result(result: prepay_services.PaymentResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2, default=str))
        return
    e, a = result.entry, result.account
    note = " (already recorded under this idempotency key)" if result.duplicate else ""
    click.echo(f"entry {e.seq}: {e.kind} {e.amount} {a.currency}, balance {a.balance} {a.currency}{note}")
    if result.switch is not None:
        click.echo(f"supply: {result.switch} ({a.last_switch_error or f'command {a.last_command_id}'})")


@prepay.command()
@click.argument("account_id", type=click.IntRange(1))
@click.argument("amount")
@click.option("--currency", required=True, help="the account's currency (ISO 4217)")
@click.option("--reference", default="payment", show_default=True)
@click.option("--idempotency-key", help="repeat-safe: the same key records the payment once")
@click.option("--json", "as_json", is_flag=True)
def pay(
    account_id: int, amount: str, currency: str, reference: str, idempotency_key: str | None, as_json: bool
) -> None:
    """Record a payment (top-up) of AMOUNT on ACCOUNT_ID."""
    result = run_local(lambda p: prepay_services.record_payment(
        p, CLI_SCOPE, account_id, amount=amount, currency=currency.upper(), reference=reference,
        idempotency_key=idempotency_key,
    ))  # fmt: skip
    _print_result(result, as_json)


@prepay.command()
@click.argument("account_id", type=click.IntRange(1))
@click.argument("amount")
@click.option("--currency", required=True)
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
def adjust(account_id: int, amount: str, currency: str, reason: str, as_json: bool) -> None:
    """Post a signed adjustment AMOUNT on ACCOUNT_ID with its reason.

    A negative amount follows "--": openami prepay adjust --currency EUR --reason "..." 42 -- -2.50
    """
    result = run_local(lambda p: prepay_services.adjust(
        p, CLI_SCOPE, account_id, amount=amount, currency=currency.upper(), reason=reason,
    ))  # fmt: skip
    _print_result(result, as_json)


@prepay.command()
@click.option("--account", "account_id", type=click.IntRange(1))
@click.option("--open", "open_only", is_flag=True, help="only alerts not cleared by a top-up")
@click.option("--json", "as_json", is_flag=True)
def alerts(account_id: int | None, open_only: bool, as_json: bool) -> None:
    """Low- and zero-credit alerts, newest first."""
    views = run_local(lambda p: prepay_services.list_alerts(p, CLI_SCOPE, account_id=account_id, open_only=open_only))
    if as_json:
        _json(views)
        return
    _table("prepayment alerts", ("id", "account", "meter", "kind", "balance", "currency", "raised", "cleared"),
           [(a.id, a.account_id, a.meter_id, a.kind, a.balance, a.currency, a.raised_at, a.cleared_at)
            for a in views])  # fmt: skip


@prepay.command()
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), required=True)
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), required=True)
@click.option("--account", "account_id", type=click.IntRange(1))
@click.option("--tolerance", "tolerance_wh", type=click.FloatRange(0), help="Wh (default from settings)")
@click.option("--only-differences", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def reconcile(
    start: datetime, end: datetime, account_id: int | None, tolerance_wh: float | None, only_differences: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Debited energy against the import register over --from/--to (UTC when no offset); exit 3 on differences."""
    start, end = (d if d.tzinfo else d.replace(tzinfo=UTC) for d in (start, end))
    rows = run_local(lambda p: prepay_reconcile.reconcile(
        p, CLI_SCOPE, start, end, account_id=account_id, tolerance_wh=tolerance_wh, only_differences=only_differences,
    ))  # fmt: skip
    if as_json:
        _json(rows)
    else:
        _table("reconciliation", ("account", "meter", "status", "register Wh", "debited Wh", "difference Wh",
                                  "intervals"),
               [(r.account_id, r.meter_id, r.status, r.register_wh, r.debited_wh, r.difference_wh, r.intervals)
                for r in rows])  # fmt: skip
    if any(r.status == "difference" for r in rows):
        raise SystemExit(3)
