"""Energy balance per transformer and the anomaly rules, on constructed data (SQLite and PostgreSQL).

Each rule is shown firing when it should and staying silent when it should not; a scan writes what
fired to the watch list (and a case for the rules in ``case_rules``) and clears what stopped firing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import tables as t
from openami.domain.codes import ChannelCode
from openami.errors import InvalidInput, NotFound
from openami.services import revenue
from openami.services.bootstrap import reload_targets
from tests.integration.revenue.helpers import (
    DAY,
    END,
    NOW,
    OPERATOR,
    Clock,
    document,
    fill,
    load_grid,
    platform_on,
    register,
    switch_command,
    transformer,
)

LOSSES = 1.03  # 3 % technical losses: within the 5 % tolerance


def _watch(platform, rule):  # type: ignore[no-untyped-def]
    return {w.meter_id: w for w in revenue.watch_list(platform, OPERATOR, rule=rule)}


def test_check_meters_are_recorded_at_import_and_have_no_service_point(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.select(t.transformer_check_meters.c.meter_id, t.transformer_check_meters.c.transformer_id)
            ).all()
        )
        point = conn.execute(sa.select(t.meters.c.service_point_id).where(t.meters.c.id == ids["CHK0001"])).scalar_one()
    assert rows == {ids["CHK0001"]: transformer(1), ids["CHK0002"]: transformer(2)}
    assert point is None
    reload_targets(platform)
    assert ids["CHK0001"] in platform.collector.targets  # collected like any meter
    assert load_grid(platform) == ids  # importing again changes nothing


@pytest.mark.parametrize("problem", ["unknown transformer", "service point"])
def test_a_bad_check_meter_entry_is_refused_and_nothing_is_imported(
    engine: Engine, tmp_path: Path, problem: str
) -> None:
    platform = platform_on(engine, tmp_path)
    doc = document()
    check = doc["meters"][-1]
    if problem == "unknown transformer":
        check["check_for_transformer"] = "SS09-F01-T999"
    else:
        check["service_point_id"] = "SP10000"
    with pytest.raises(InvalidInput):
        load_grid(platform, doc)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.meters)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(t.transformer_check_meters)).scalar_one() == 0


def _healthy_and_bypassed(platform, ids) -> None:  # type: ignore[no-untyped-def]
    """Transformer 1 healthy; on transformer 2 meter OAM20000 registers 40 % of its load in the last day."""
    engine = platform.engine
    start = END - 8 * DAY
    for x in (1, 2):
        for i in range(3):
            fill(engine, ids[f"OAM{x}{i:04d}"], start, END, 100.0 + 10 * i)
        fill(engine, ids[f"CHK{x:04d}"], start, END, (100 + 110 + 120) * LOSSES)
    fill(engine, ids["OAM20000"], END - DAY, END, 40.0)  # overwrites the last day: bypass


def test_energy_balance_flags_the_transformer_with_a_bypassed_meter_and_not_the_healthy_one(
    engine: Engine, tmp_path: Path
) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    _healthy_and_bypassed(platform, ids)

    healthy = revenue.energy_balance(platform, OPERATOR, transformer(1))
    bypassed = revenue.energy_balance(platform, OPERATOR, transformer(2))
    assert not healthy.flagged
    assert (healthy.intervals, healthy.meters) == (96, 3)
    assert healthy.loss_share == pytest.approx(0.03 / 1.03)
    assert bypassed.flagged
    assert bypassed.loss_wh == pytest.approx(96 * 60 + 96 * 330 * 0.03)
    assert [s.meter_id for s in bypassed.suspects] == [ids["OAM20000"]]
    log = t.audit_log.c
    with engine.connect() as conn:  # the suspects' consumption is personal data: the read is audited
        reads = conn.execute(sa.select(log.resource).where(log.action == "cases.read")).scalars().all()
    assert sorted(reads) == [f"transformer:{transformer(1)}", f"transformer:{transformer(2)}"]

    summary = revenue.scan(platform, OPERATOR)
    assert [b.flagged for b in summary.balances] == [False, True]
    watch = revenue.watch_list(platform, OPERATOR, rule="energy-balance")
    assert [(w.meter_id, w.transformer_id) for w in watch] == [(ids["OAM20000"], transformer(2))]
    cases = revenue.list_cases(platform, OPERATOR, reason="energy-balance")
    assert [(c.transformer_id, c.meter_id, c.state) for c in cases] == [(transformer(2), None, "open")]
    assert len(revenue.balance_history(platform, OPERATOR, transformer(2))) == 1

    revenue.scan(platform, OPERATOR)  # again: no second case, no second watch entry
    assert len(revenue.list_cases(platform, OPERATOR, reason="energy-balance")) == 1
    assert len(revenue.watch_list(platform, OPERATOR, rule="energy-balance")) == 1


def test_a_meter_not_read_yet_is_not_a_loss(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    for i in range(3):
        fill(platform.engine, ids[f"OAM1{i:04d}"], END - DAY, END - DAY // 2 if i == 0 else END, 100.0)
    fill(platform.engine, ids["CHK0001"], END - DAY, END, 300.0)
    balance = revenue.energy_balance(platform, OPERATOR, transformer(1))
    assert balance.intervals == 48  # only the half day all meters have
    assert not balance.flagged
    assert balance.loss_wh == pytest.approx(0.0)


def test_a_transformer_without_check_meter_has_no_balance(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    load_grid(platform, document(check_meters=False))
    with pytest.raises(NotFound):
        revenue.energy_balance(platform, OPERATOR, transformer(1))


def test_consumption_after_a_confirmed_disconnect(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    consuming, idle, reconnected = ids["OAM10000"], ids["OAM10001"], ids["OAM10002"]
    for meter in (consuming, idle, reconnected):
        switch_command(engine, meter, "disconnect", NOW - timedelta(days=2))
    switch_command(engine, reconnected, "reconnect", NOW - timedelta(days=1))
    fill(engine, consuming, END - 2 * DAY, END, 50.0)
    fill(engine, idle, END - 2 * DAY, END, 0.0)
    fill(engine, reconnected, END - DAY, END, 50.0)

    summary = revenue.scan(platform, OPERATOR)
    assert summary.findings["consumption-while-disconnected"] == 1
    watch = _watch(platform, "consumption-while-disconnected")
    assert set(watch) == {consuming}
    assert watch[consuming].evidence["import_wh"] == pytest.approx(
        50.0 * (2 * 96 - 1)
    )  # the first interval is left out
    cases = revenue.list_cases(platform, OPERATOR, meter_id=consuming)
    assert [c.reason for c in cases] == ["consumption-while-disconnected"]  # a rule of case_rules
    assert watch[consuming].case_id == cases[0].id

    switch_command(engine, consuming, "reconnect", NOW)  # reconnected: the entry is cleared at the next scan
    assert revenue.scan(platform, OPERATOR).cleared_watch >= 1
    assert _watch(platform, "consumption-while-disconnected") == {}


def test_consumption_at_a_vacant_premise(engine: Engine, tmp_path: Path) -> None:
    clock = Clock(NOW - timedelta(days=1))
    platform = platform_on(engine, tmp_path, clock)
    ids = load_grid(platform)
    flags = revenue.set_premise_flags(platform, OPERATOR, "P10000", vacant=True)
    assert flags.vacant_since == clock.now
    revenue.set_premise_flags(platform, OPERATOR, "P10001", vacant=True)
    clock.now = NOW
    fill(engine, ids["OAM10000"], END - DAY, END, 20.0)  # vacant, consuming
    fill(engine, ids["OAM10001"], END - DAY, END, 0.0)  # vacant, idle
    fill(engine, ids["OAM10002"], END - DAY, END, 500.0)  # occupied
    revenue.scan(platform, OPERATOR)
    watch = _watch(platform, "consumption-while-vacant")
    assert set(watch) == {ids["OAM10000"]}
    assert watch[ids["OAM10000"]].evidence["premise_id"] == "P10000"
    assert revenue.list_cases(platform, OPERATOR) == []  # not a case rule by default

    revenue.set_premise_flags(platform, OPERATOR, "P10000", vacant=False)
    revenue.scan(platform, OPERATOR)
    assert _watch(platform, "consumption-while-vacant") == {}
    with pytest.raises(NotFound):
        revenue.set_premise_flags(platform, OPERATOR, "P99999", vacant=True)


def test_move_out_move_in_register_mismatch(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    moved, honest = ids["OAM10000"], ids["OAM10001"]
    out_at, in_at = NOW - timedelta(days=3), NOW - timedelta(days=1)
    for meter, at_move_in in ((moved, 1600.0), (honest, 1040.0)):
        switch_command(engine, meter, "disconnect", out_at, final_import_wh=1000.0)
        switch_command(engine, meter, "reconnect", in_at)
        register(engine, meter, int(in_at.timestamp()) - 60, at_move_in / 1000, unit="kWh")
    revenue.scan(platform, OPERATOR)
    watch = _watch(platform, "register-mismatch")
    assert set(watch) == {moved}
    assert watch[moved].evidence["difference_wh"] == pytest.approx(600.0)

    # by given times, from register snapshots alone
    other = ids["OAM10002"]
    register(engine, other, END - 3 * DAY, 5000.0)
    register(engine, other, END - DAY + 600, 5050.0)
    assert revenue.check_move(platform, OPERATOR, other, NOW - timedelta(days=3), NOW - timedelta(days=1)) is None
    register(engine, other, END - DAY + 300, 4000.0)  # nearer to the move-in: the register went back
    finding = revenue.check_move(platform, OPERATOR, other, NOW - timedelta(days=3), NOW - timedelta(days=1))
    assert finding is not None
    assert finding.evidence["difference_wh"] == pytest.approx(-1000.0)
    with pytest.raises(InvalidInput, match="no import register"):
        revenue.check_move(platform, OPERATOR, other, NOW - timedelta(days=10), NOW - timedelta(days=1))


def test_reverse_flow_without_registered_generation(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    exporting, solar, none = ids["OAM10000"], ids["OAM10001"], ids["OAM10002"]
    fill(engine, exporting, END - DAY, END, 2.0, ChannelCode.ACTIVE_EXPORT)
    fill(engine, solar, END - DAY, END, 300.0, ChannelCode.ACTIVE_EXPORT)
    fill(engine, none, END - DAY, END, 0.0, ChannelCode.ACTIVE_EXPORT)
    revenue.set_premise_flags(platform, OPERATOR, "P10001", has_generation=True)
    revenue.scan(platform, OPERATOR)
    watch = _watch(platform, "reverse-flow")
    assert set(watch) == {exporting}
    assert watch[exporting].evidence["export_wh"] == pytest.approx(192.0)


def test_sudden_sustained_drop(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    dropped, steady, young, idle = ids["OAM10000"], ids["OAM10001"], ids["OAM10002"], ids["OAM20000"]
    for meter in (dropped, steady):
        fill(engine, meter, END - 35 * DAY, END, 100.0)
    fill(engine, dropped, END - 7 * DAY, END, 30.0)
    fill(engine, young, END - 10 * DAY, END - 7 * DAY, 100.0)  # too little baseline
    fill(engine, young, END - 7 * DAY, END, 10.0)
    fill(engine, idle, END - 35 * DAY, END - 7 * DAY, 5.0)  # below the baseline floor
    fill(engine, idle, END - 7 * DAY, END, 0.0)
    revenue.scan(platform, OPERATOR)
    watch = _watch(platform, "sustained-drop")
    assert set(watch) == {dropped}
    assert watch[dropped].evidence["share"] == pytest.approx(0.3)


def test_unknown_rule_or_meter_is_refused(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    load_grid(platform)
    with pytest.raises(InvalidInput):
        revenue.watch_list(platform, OPERATOR, rule="no-such-rule")
    with pytest.raises(NotFound):
        revenue.scan(platform, OPERATOR, meter_ids=[987654])
