"""The prepayment ledger on SQLite and PostgreSQL: payments, debits from stored readings, corrections, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from openami.db import prepay as repo
from openami.db.tables import audit_log, prepay_ledger
from openami.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from openami.services import prepay
from openami.services.prepay_engine import debit_readings
from openami.services.prepay_reconcile import reconcile

from .helpers import BILLING, T0, add_meters, customer, make_platform, store, tariff


def _count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _debit_all(engine: Engine, messages: list) -> None:  # type: ignore[type-arg]
    for msg in messages:
        with engine.begin() as conn:
            debit_readings(conn, msg, now=T0 + timedelta(days=1))


def test_payment_in_wrong_currency_or_not_positive_is_refused_and_nothing_is_written(
    engine: Engine, tmp_path: Path
) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform)
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    ledger_before, audit_before = _count(engine, prepay_ledger), _count(engine, audit_log)
    bad = [("10.00", "GBP"), ("-5.00", "EUR"), ("0", "EUR"), ("0.001", "EUR"), ("ten", "EUR"), ("10", "XXZ")]
    for amount, currency in bad:
        with pytest.raises(InvalidInput):
            prepay.record_payment(platform, BILLING, account.id, amount=amount, currency=currency, reference="r",
                                  now=T0)  # fmt: skip
    assert _count(engine, prepay_ledger) == ledger_before
    assert _count(engine, audit_log) == audit_before
    assert prepay.get_account(platform, BILLING, account.id, now=T0).balance == "0.00"


def test_payment_is_recorded_once_per_idempotency_key(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform)
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    first = prepay.record_payment(platform, BILLING, account.id, amount="20.00", currency="EUR", reference="shop 1",
                                  idempotency_key="pay-1", now=T0)  # fmt: skip
    again = prepay.record_payment(platform, BILLING, account.id, amount="20.00", currency="EUR", reference="shop 1",
                                  idempotency_key="pay-1", now=T0)  # fmt: skip
    assert not first.duplicate
    assert again.duplicate
    assert again.entry.seq == first.entry.seq
    assert again.account.balance == "20.00"
    with pytest.raises(Conflict):
        prepay.record_payment(platform, BILLING, account.id, amount="25.00", currency="EUR", reference="shop 1",
                              idempotency_key="pay-1", now=T0)  # fmt: skip
    assert [e.amount for e in prepay.get_ledger(platform, BILLING, account.id, now=T0)] == ["20.00"]


def test_ledger_rows_cannot_be_updated_or_deleted(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform)
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    prepay.record_payment(platform, BILLING, account.id, amount="10.00", currency="EUR", reference="r", now=T0)
    for statement in (
        prepay_ledger.update().values(amount=999_000_000),
        prepay_ledger.delete(),
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(statement)
    with engine.connect() as conn:
        (entry,) = repo.ledger(conn, account.id)
    assert entry.amount == 10_000_000


def test_debits_price_import_energy_and_a_redelivered_read_is_not_debited_twice(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform, price="0.25")
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    prepay.record_payment(platform, BILLING, account.id, amount="10.00", currency="EUR", reference="r", now=T0)
    stored = store(platform, meter, T0, [400.0, 600.0, 250.5])  # 1.2505 kWh at 0.25 = 0.312625
    _debit_all(engine, stored)
    _debit_all(engine, stored)  # the bus delivers at least once
    ledger = prepay.get_ledger(platform, BILLING, account.id, now=T0)
    assert [(e.kind, e.amount, e.energy_kwh) for e in ledger] == [
        ("consumption", "-0.312625", "1.2505"),
        ("payment", "10.00", None),
    ]
    assert prepay.get_account(platform, BILLING, account.id, now=T0).balance == "9.687375"


def test_a_new_version_of_a_debited_interval_is_corrected_by_an_entry_not_an_edit(
    engine: Engine, tmp_path: Path
) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform, price="0.30")
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    prepay.record_payment(platform, BILLING, account.id, amount="10.00", currency="EUR", reference="r", now=T0)
    _debit_all(engine, store(platform, meter, T0, [1000.0, 1000.0]))
    _debit_all(engine, store(platform, meter, T0, [1000.0, 500.0]))  # the second interval re-read: 500 Wh
    ledger = prepay.get_ledger(platform, BILLING, account.id, now=T0)
    assert [(e.kind, e.amount, e.energy_kwh) for e in ledger][:2] == [
        ("correction", "0.15", "-0.5"),
        ("consumption", "-0.60", "2"),
    ]
    assert prepay.get_account(platform, BILLING, account.id, now=T0).balance == "9.55"  # 10 - 1.5 kWh x 0.30


def test_low_and_zero_credit_raise_one_alert_each_and_a_top_up_clears_them(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform, price="1.00")
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", low_credit_threshold="2.00", now=T0)
    prepay.record_payment(platform, BILLING, account.id, amount="5.00", currency="EUR", reference="r", now=T0)
    assert prepay.list_alerts(platform, BILLING, now=T0) == []
    _debit_all(engine, store(platform, meter, T0, [1000.0, 1000.0, 1000.0]))  # 2.00 left: low
    _debit_all(engine, store(platform, meter, T0 + timedelta(hours=1), [500.0]))  # 1.50: still low, no new alert
    alerts = prepay.list_alerts(platform, BILLING, now=T0)
    assert [(a.kind, a.balance, a.cleared_at) for a in alerts] == [("low-credit", "2.00", None)]
    _debit_all(engine, store(platform, meter, T0 + timedelta(hours=2), [2000.0]))  # -0.50: zero credit
    alerts = prepay.list_alerts(platform, BILLING, open_only=True, now=T0)
    assert [(a.kind, a.balance) for a in alerts] == [("zero-credit", "-0.50"), ("low-credit", "2.00")]
    view = prepay.get_account(platform, BILLING, account.id, now=T0)
    assert (view.credit_state, view.balance) == ("zero", "-0.50")
    prepay.record_payment(platform, BILLING, account.id, amount="10.00", currency="EUR", reference="r", now=T0)
    assert prepay.list_alerts(platform, BILLING, open_only=True, now=T0) == []
    assert len(prepay.list_alerts(platform, BILLING, now=T0)) == 2
    with engine.connect() as conn:
        actions = list(conn.execute(sa.select(audit_log.c.details).where(audit_log.c.action == "prepay.alert")))
    assert len(actions) == 2


def test_adjustments_are_signed_with_a_reason_and_authorised(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform)
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    result = prepay.adjust(platform, BILLING, account.id, amount=Decimal("7.5"), currency="EUR", reason="goodwill",
                           now=T0)  # fmt: skip
    assert (result.entry.kind, result.entry.amount, result.entry.balance_after) == ("adjustment", "7.50", "7.50")
    prepay.adjust(platform, BILLING, account.id, amount="-2.25", currency="EUR", reason="meter fault refund reversed",
                  now=T0)  # fmt: skip
    with pytest.raises(InvalidInput):
        prepay.adjust(platform, BILLING, account.id, amount="1", currency="EUR", reason="  ", now=T0)
    with pytest.raises(PermissionDenied):
        prepay.adjust(platform, customer("P0001"), account.id, amount="100", currency="EUR", reason="me", now=T0)
    assert prepay.get_account(platform, BILLING, account.id, now=T0).balance == "5.25"


def test_customers_see_only_accounts_at_their_own_premises(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    mine, theirs = add_meters(platform, 2)
    tariff(platform)
    own = prepay.enrol(platform, BILLING, meter_id=mine, tariff_code="STD", now=T0)
    other = prepay.enrol(platform, BILLING, meter_id=theirs, tariff_code="STD", now=T0)
    scope = customer("P0001")
    assert prepay.get_account(platform, scope, own.id, now=T0).premise_id == "P0001"
    assert [a.id for a in prepay.list_accounts(platform, scope, now=T0)] == [own.id]
    with pytest.raises(NotFound):
        prepay.get_account(platform, scope, other.id, now=T0)
    with pytest.raises(NotFound):
        prepay.get_ledger(platform, scope, other.id, now=T0)
    with pytest.raises(PermissionDenied):
        prepay.record_payment(platform, scope, own.id, amount="1.00", currency="EUR", reference="r", now=T0)


def test_enrolment_refuses_unknown_meters_tariffs_duplicates_and_bad_hours(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform)
    with pytest.raises(NotFound):
        prepay.enrol(platform, BILLING, meter_id=9999, tariff_code="STD", now=T0)
    with pytest.raises(NotFound):
        prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="NOPE", now=T0)
    with pytest.raises(InvalidInput):
        prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", friendly_hours="someday", now=T0)
    prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    with pytest.raises(Conflict):
        prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    with pytest.raises(Conflict):
        tariff(platform)  # tariffs are immutable: the code is taken
    with pytest.raises(InvalidInput):
        tariff(platform, "NEG", price="-0.10")


def test_standing_charges_are_posted_once_per_completed_day(engine: Engine, tmp_path: Path) -> None:
    platform = make_platform(engine, tmp_path)
    (meter,) = add_meters(platform, 1)
    tariff(platform, standing="0.40")
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    from openami.services.prepay_engine import post_standing_charges  # noqa: PLC0415

    later = T0 + timedelta(days=3, hours=1)  # enrolment day is free; days 2 and 3 are complete
    for _ in range(2):
        with engine.begin() as conn:
            post_standing_charges(conn, account.id, now=later)
    ledger = prepay.get_ledger(platform, BILLING, account.id, now=T0)
    assert [(e.kind, e.amount) for e in ledger] == [("standing-charge", "-0.40"), ("standing-charge", "-0.40")]
    assert ledger[0].period_start == ledger[1].period_end


def _store_with_register(platform, meter: int, start, values: list[float], register_wh: float) -> list:  # type: ignore[no-untyped-def,type-arg]
    """Store a read whose import register (captured at read time) stands at ``register_wh``."""
    from openami.domain.messages import CollectedReadings  # noqa: PLC0415
    from openami.domain.readings import RegisterSnapshot  # noqa: PLC0415

    first = int(start.timestamp()) // 900 * 900 + 900
    ends = tuple(first + i * 900 for i in range(len(values)))
    read_at = datetime.fromtimestamp(ends[-1], UTC) + timedelta(minutes=5)
    snapshot = RegisterSnapshot(meter, "1.0.1.8.0.255", read_at, register_wh / 1000, "kWh", read_at)
    msg = CollectedReadings(
        meter_id=meter, read_at=read_at, meter_clock=read_at, requested_from=ends[0], requested_to=ends[-1],
        interval_ends=ends, import_wh=tuple(values), export_wh=tuple(0.0 for _ in ends),
        status=tuple(0 for _ in ends), registers=(snapshot,),
    )  # fmt: skip
    return list(platform.ingestor.ingest([msg]).stored)


def test_reconciliation_finds_an_injected_difference_between_ledger_and_register(
    engine: Engine, tmp_path: Path
) -> None:
    platform = make_platform(engine, tmp_path)
    honest, leaky = add_meters(platform, 2)
    tariff(platform)
    accounts = {m: prepay.enrol(platform, BILLING, meter_id=m, tariff_code="STD", now=T0).id for m in (honest, leaky)}
    for meter in (honest, leaky):
        _debit_all(engine, _store_with_register(platform, meter, T0, [500.0] * 4, 10_000.0))
        _debit_all(engine, _store_with_register(platform, meter, T0 + timedelta(hours=1), [500.0] * 4, 12_000.0))
    # the leaky meter's register advanced 1.5 kWh more than its profile says (energy the ledger never saw)
    _debit_all(engine, _store_with_register(platform, leaky, T0 + timedelta(hours=2), [500.0] * 4, 15_500.0))
    _debit_all(engine, _store_with_register(platform, honest, T0 + timedelta(hours=2), [500.0] * 4, 14_000.0))
    rows = reconcile(platform, BILLING, T0, T0 + timedelta(days=1), tolerance_wh=50.0, now=T0)
    by_account = {r.account_id: r for r in rows}
    assert by_account[accounts[honest]].status == "ok"
    assert by_account[accounts[honest]].difference_wh == 0.0
    leak = by_account[accounts[leaky]]
    assert (leak.status, leak.register_wh, leak.debited_wh, leak.difference_wh) == (
        "difference",
        5500.0,
        4000.0,
        1500.0,
    )
    only = reconcile(platform, BILLING, T0, T0 + timedelta(days=1), only_differences=True, now=T0)
    assert [r.account_id for r in only] == [accounts[leaky]]
    with pytest.raises(InvalidInput):
        reconcile(platform, BILLING, T0 + timedelta(days=1), T0, now=T0)
