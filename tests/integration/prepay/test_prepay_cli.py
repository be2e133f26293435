"""``openami prepay`` on both databases: tariff, enrol, idempotent payments, refusals, ledger, alerts, reconcile."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from openami.cli.prepay import prepay
from openami.db.engine import create_engine

from .helpers import add_meters, make_platform


@pytest.fixture
def run(db_url: str, tmp_path: Path) -> Callable[..., Result]:
    env = {"OPENAMI_DATABASE_URL": db_url, "OPENAMI_DATA_DIR": str(tmp_path)}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(prepay, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def meter(db_url: str, tmp_path: Path) -> int:
    engine = create_engine(db_url)
    try:
        (meter_id,) = add_meters(make_platform(engine, tmp_path), 1)
    finally:
        engine.dispose()
    return meter_id


def test_tariff_enrol_pay_and_ledger(run: Callable[..., Result], meter: int) -> None:
    added = run("tariff", "add", "STD", "--name", "standard", "--currency", "eur", "--price", "0.25",
                "--standing", "0.40")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "0.25 EUR/kWh" in added.output
    enrolled = run("enrol", "--meter", str(meter), "--tariff", "STD", "--low-credit", "3")
    assert enrolled.exit_code == 0, enrolled.output
    account = enrolled.output.split()[1].rstrip(":")
    for _ in range(2):
        paid = run("pay", account, "12.50", "--currency", "EUR", "--reference", "shop 9", "--idempotency-key", "r-1")
        assert paid.exit_code == 0, paid.output
    assert "already recorded" in paid.output
    assert "balance 12.50 EUR" in paid.output
    wrong = run("pay", account, "5", "--currency", "GBP")
    assert wrong.exit_code == 1
    assert "GBP is refused" in wrong.output
    negative = run("pay", "--currency", "EUR", account, "--", "-5")
    assert negative.exit_code == 1
    adjusted = run("adjust", "--currency", "EUR", "--reason", "meter test refund reversed", account, "--", "-10.00")
    assert adjusted.exit_code == 0, adjusted.output
    ledger = run("ledger", account, "--json")
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in json.loads(ledger.output)] == [
        ("adjustment", "-10.00", "2.50"), ("payment", "12.50", "12.50"),
    ]  # fmt: skip
    table = run("ledger", account)
    assert "shop 9" in table.output
    alerts = json.loads(run("alerts", "--open", "--json").output)
    assert [(a["kind"], a["balance"]) for a in alerts] == [("low-credit", "2.50")]
    listed = json.loads(run("accounts", "--json").output)
    assert [(a["meter_id"], a["balance"], a["credit_state"]) for a in listed] == [(meter, "2.50", "low")]
    reconciled = run("reconcile", "--from", "2026-11-01", "--to", "2026-12-01", "--json")
    assert reconciled.exit_code == 0, reconciled.output
    assert [r["status"] for r in json.loads(reconciled.output)] == ["no-registers"]
    assert "reconciliation" in run("reconcile", "--from", "2026-11-01", "--to", "2026-12-01").output
