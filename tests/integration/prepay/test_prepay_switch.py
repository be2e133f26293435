"""Zero credit disconnects through the switch service (workflow "prepay"), except in friendly-credit hours or
at a critical-care premise; a top-up reconnects. On SQLite and PostgreSQL, with the real switch service
(signed, queued commands; no meter is contacted: the queue is not started)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import disconnect_calendar, prepay, switch
from openami.services.context import Platform
from openami.services.disconnect_calendar import CalendarEntry
from openami.services.prepay_engine import SYSTEM_SCOPE, PrepayEngine, switch_link

from .helpers import BILLING, T0, add_meters, make_platform, store, tariff

SATURDAY = T0 + timedelta(days=5)  # Saturday 09:00 UTC: friendly all day by default
NEXT_MONDAY = T0 + timedelta(days=7)


def _engine(platform: Platform) -> PrepayEngine:
    return PrepayEngine(platform.engine, platform.settings, switch=switch_link(platform), now=platform.now)


async def _run_out_of_credit(platform: Platform, meter: int, at: datetime) -> int:
    """Enrol with 1.00 of credit, then consume 2 kWh at 1.00/kWh: the balance goes to -1.00."""
    tariff(platform, price="1.00", standing="0")
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    prepay.record_payment(platform, BILLING, account.id, amount="1.00", currency="EUR", reference="r", now=T0)
    engine = _engine(platform)
    engine.enrolled(meter)  # as prepay.enrol tells the platform's running engine
    for msg in store(platform, meter, at - timedelta(hours=1), [1000.0, 1000.0]):
        await engine.handle(msg)
    assert prepay.get_account(platform, BILLING, account.id, now=at).balance == "-1.00"
    return account.id


def _commands(platform: Platform, meter: int) -> list[switch.CommandView]:
    return switch.list_commands(platform, SYSTEM_SCOPE, meter_id=meter)


async def test_zero_credit_outside_friendly_hours_disconnects_once_and_again_after_a_failed_disconnect(
    engine: Engine, tmp_path: Path
) -> None:
    clock = [T0 + timedelta(hours=2)]
    platform = make_platform(engine, tmp_path, clock=clock)
    (meter,) = add_meters(platform, 1)
    account_id = await _run_out_of_credit(platform, meter, clock[0])
    (disconnect,) = _commands(platform, meter)
    assert (disconnect.command, disconnect.workflow, disconnect.status) == ("disconnect", "prepay", "queued")
    assert disconnect.requested_by == "system:prepay"
    view = prepay.get_account(platform, BILLING, account_id, now=clock[0])
    assert (view.state, view.last_command_id) == ("disconnected", disconnect.id)
    assert _engine(platform).enforce(account_id) is None  # decided once: no second command
    assert len(_commands(platform, meter)) == 1
    # the command ends without opening the switch (stands in for a meter offline until it expired)
    switch.cancel_command(platform, SYSTEM_SCOPE, disconnect.id)
    assert _engine(platform).check() == 1
    again = _commands(platform, meter)[0]
    assert (again.command, again.status) == ("disconnect", "queued")
    assert again.id != disconnect.id
    assert prepay.get_account(platform, BILLING, account_id, now=clock[0]).last_command_id == again.id


async def test_a_top_up_before_the_disconnect_was_sent_cancels_it(engine: Engine, tmp_path: Path) -> None:
    clock = [T0 + timedelta(hours=2)]
    platform = make_platform(engine, tmp_path, clock=clock)
    (meter,) = add_meters(platform, 1)
    account_id = await _run_out_of_credit(platform, meter, clock[0])
    paid = prepay.record_payment(platform, BILLING, account_id, amount="5.00", currency="EUR", reference="shop",
                                 now=clock[0])  # fmt: skip
    assert paid.switch == "reconnect"
    (disconnect,) = _commands(platform, meter)
    assert disconnect.status == "cancelled"
    assert paid.account.state == "connected"


async def test_friendly_hours_suppress_the_disconnect_until_they_end(engine: Engine, tmp_path: Path) -> None:
    clock = [SATURDAY]
    platform = make_platform(engine, tmp_path, clock=clock)
    (meter,) = add_meters(platform, 1)
    account_id = await _run_out_of_credit(platform, meter, clock[0])
    assert _commands(platform, meter) == []
    view = prepay.get_account(platform, BILLING, account_id, now=clock[0])
    assert (view.state, view.credit_state) == ("connected", "zero")
    clock[0] = NEXT_MONDAY  # the periodic check after the weekend
    assert _engine(platform).check() == 1
    (disconnect,) = _commands(platform, meter)
    assert (disconnect.command, disconnect.workflow) == ("disconnect", "prepay")


async def test_a_critical_care_premise_is_never_disconnected_for_zero_credit(engine: Engine, tmp_path: Path) -> None:
    clock = [T0 + timedelta(hours=2)]
    platform = make_platform(engine, tmp_path, clock=clock)
    (meter,) = add_meters(platform, 1, critical=(1,))
    account_id = await _run_out_of_credit(platform, meter, clock[0])
    assert _commands(platform, meter) == []
    view = prepay.get_account(platform, BILLING, account_id, now=clock[0])
    assert view.state == "connected"
    assert "critical care" in (view.last_switch_error or "")
    assert [a.kind for a in prepay.list_alerts(platform, BILLING, open_only=True, now=clock[0])] == [
        "zero-credit", "low-credit",
    ]  # fmt: skip


async def test_a_weather_moratorium_in_the_disconnect_calendar_holds_the_disconnect(
    engine: Engine, tmp_path: Path
) -> None:
    clock = [T0 + timedelta(hours=2)]
    platform = make_platform(engine, tmp_path, clock=clock)
    (meter,) = add_meters(platform, 1)
    operator = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
    storm = CalendarEntry(0, "moratorium", "SS01", "storm warning", starts_at=T0, ends_at=T0 + timedelta(days=1))
    disconnect_calendar.add_entry(engine, operator, storm, now=T0)
    account_id = await _run_out_of_credit(platform, meter, clock[0])
    assert _commands(platform, meter) == []
    assert "moratorium" in (prepay.get_account(platform, BILLING, account_id, now=clock[0]).last_switch_error or "")
    clock[0] = T0 + timedelta(days=1, hours=2)  # the moratorium is over
    assert _engine(platform).check() == 1
    assert [c.command for c in _commands(platform, meter)] == ["disconnect"]


async def test_reads_the_engine_did_not_debit_are_caught_up_by_the_periodic_check(
    engine: Engine, tmp_path: Path
) -> None:
    clock = [T0 + timedelta(hours=3)]
    platform = make_platform(engine, tmp_path, clock=clock)
    (meter,) = add_meters(platform, 1)
    tariff(platform, price="0.50", standing="0")
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)  # another process
    prepay.record_payment(platform, BILLING, account.id, amount="10.00", currency="EUR", reference="r", now=T0)
    running = _engine(platform)  # started before the enrolment: does not know the meter yet
    for msg in store(platform, meter, T0, [1000.0, 1000.0]):
        await running.handle(msg)
    assert [e.kind for e in prepay.get_ledger(platform, BILLING, account.id, now=T0)] == ["payment"]
    running.check()
    running.check()  # twice: nothing is debited twice
    ledger = prepay.get_ledger(platform, BILLING, account.id, now=T0)
    assert [(e.kind, e.amount, e.energy_kwh) for e in ledger] == [
        ("consumption", "-1.00", "2"),
        ("payment", "10.00", None),
    ]
