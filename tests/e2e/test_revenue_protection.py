"""Revenue protection end to end: a simulated fleet with a check meter at every transformer, in a worker
process, pushing to the platform. Tamper pushes open one case per meter; after a collection the
monitor balances every transformer (the check meter measures the true load of its meters: a healthy
fleet balances within tolerance) and an on-demand scan agrees."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import tables as t
from openami.db.meters import meter_ids_by_serial
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import revenue
from openami.services.bootstrap import build_platform, reload_targets, start_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.settings import CollectionSettings, PushSettings, RevenueSettings, Settings
from openami.sim.fleet import FleetConfig
from openami.sim.runner import start_fleet_processes

DEADLINE_S = 60.0
OPERATOR = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


def _tamper_cases(platform: Platform) -> dict[int, revenue.CaseRow]:
    return {c.meter_id: c for c in revenue.list_cases(platform, OPERATOR, reason="tamper") if c.meter_id is not None}


def _balances(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(t.energy_balances)).scalar_one())


async def test_tamper_cases_and_check_meter_balance_on_a_fleet(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        collection=CollectionSettings(retries=0, timeout_s=5.0, catch_up_days=1),
        push=PushSettings(port=0),
        revenue=RevenueSettings(scan_delay_s=0.2, balance_days=0.5),
    )
    platform = build_platform(settings, engine=engine)
    await start_platform(platform)
    assert platform.push_listener is not None
    assert platform.revenue is not None
    host, port = platform.push_listener.address
    config = FleetConfig(meters=16, seed=5, flaky_fraction=0.0, drift_fraction=0.0, days=2, port=0,
                         push_host=host, push_port=port, check_meters=True)  # fmt: skip
    fleet = await asyncio.to_thread(start_fleet_processes, config, processes=1, commissioning_path=tmp_path / "c.json")
    try:
        document = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
        import_commissioning(engine, platform.keystore, document, now=datetime.now(UTC))
        reload_targets(platform)
        with engine.connect() as conn:
            by_serial = meter_ids_by_serial(conn, [m.serial for m in fleet.fleet.meters])
        meter_of = {m.index: by_serial[m.serial] for m in fleet.fleet.meters}
        checks = {m.check_for_transformer: meter_of[m.index] for m in fleet.fleet.check_meters}
        assert len(checks) >= 2

        # tamper: magnetic field on meter 0, cover opened twice on meter 1 (one case each)
        await asyncio.to_thread(fleet.control, "tamper", [0], kind="magnetic")
        await asyncio.to_thread(fleet.control, "tamper", [1], kind="cover")
        await asyncio.to_thread(fleet.control, "tamper", [1], kind="cover")
        await _until(lambda: set(_tamper_cases(platform)) == {meter_of[0], meter_of[1]}, "no tamper cases")
        await platform.bus.drain()

        # collection (check meters too) → the monitor scans and balances every transformer
        summary = await platform.collector.collect(sorted(meter_of.values()))
        assert summary.failed == 0
        await platform.bus.drain()
        await _until(lambda: _balances(engine) >= len(checks), "the monitor stored no balances")
        for transformer_id in checks:
            balance = revenue.energy_balance(platform, OPERATOR, transformer_id)
            assert balance.intervals > 0, transformer_id
            assert not balance.flagged, balance
            assert abs(balance.loss_wh) <= 0.01 * balance.check_wh + 1, balance  # the check meter sums the true load
        on_demand = revenue.scan(platform, OPERATOR)
        assert on_demand.transformers == len(checks)
        assert not any(b.flagged for b in on_demand.balances)
    finally:
        await stop_platform(platform)
        fleet.stop()
    platform = build_platform(settings, engine=engine)
    cases = _tamper_cases(platform)
    assert set(cases) == {meter_of[0], meter_of[1]}
    assert "magnetic field" in cases[meter_of[0]].summary
    evidence = [h for h in revenue.get_case(platform, OPERATOR, cases[meter_of[1]].id).history if h.kind == "evidence"]
    assert evidence  # each distinct cover-opened event once
    assert len({h.text for h in evidence}) == len(evidence)
