"""Switch workflows and the off-switch guard on a simulated fleet over TCP (issue 5), SQLite and PostgreSQL.

Meters in a worker process pin the command authority's certificate and push their events to the
platform's listener. Move-in with and without backfeed on the load side, move-out at a set time with
its final read, a non-payment disconnect and its reinstatement, load shedding that spares critical
care and its restoration; and switch openings no command explains on several meters of one area:
an alarm, the signed ignore-disconnects mode in every meter of the area, then an authorised clear.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import guard as guard_db
from openami.db import tables as t
from openami.security import command_authority as authority_core
from openami.security.keystore import master_key_provider
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import switch, switch_guard, workflows
from openami.services.bootstrap import build_platform, reload_targets, start_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.services.pki import ca_files
from openami.services.workflows import CriticalCareRefused, ShedTarget
from openami.settings import CollectionSettings, GuardSettings, PushSettings, Settings, SwitchSettings
from openami.sim.fleet import FleetConfig
from openami.sim.runner import FleetHandle, start_fleet_processes

OPERATOR = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
CLERK = RequestScope("user:clerk", frozenset({Role.BILLING_CIS}), frozenset({ALL_SCOPES}))
SECURITY = RequestScope("user:sec", frozenset({Role.SECURITY_ADMIN}), frozenset({ALL_SCOPES}))
DEADLINE_S = 30.0


@dataclass
class Site:
    platform: Platform
    fleet: FleetHandle
    meter_of: dict[int, int]  # fleet index -> meter id


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        collection=CollectionSettings(concurrency=8, retries=0, backoff_s=0.05, timeout_s=2.0, catch_up_days=1),
        switch=SwitchSettings(poll_s=0.05, retry_backoff_s=0.2, max_backoff_s=0.5),
        push=PushSettings(port=0),
        guard=GuardSettings(uncommanded_threshold=3, uncommanded_window_s=600, approval_batch_size=50),
    )


@pytest.fixture
async def site(engine: Engine, tmp_path: Path) -> AsyncIterator[Site]:
    """12 meters in one worker process pinning the authority, pushing to the started platform."""
    settings = _settings(tmp_path)
    with engine.begin() as conn:
        authority = authority_core.load_or_create(conn, master_key_provider(settings), ca_files(settings),
                                                  now=datetime.now(UTC))  # fmt: skip
    platform = build_platform(settings, engine=engine)
    await start_platform(platform)
    assert platform.push_listener is not None
    host, port = platform.push_listener.address
    config = FleetConfig(
        meters=12, seed=77, flaky_fraction=0.0, drift_fraction=0.0, days=1, port=0,
        authority_certificate_pem=authority.certificate_pem, push_host=host, push_port=port,
    )  # fmt: skip
    path = tmp_path / "commissioning.json"
    fleet = await asyncio.to_thread(start_fleet_processes, config, processes=1, commissioning_path=path)
    try:
        import_commissioning(engine, platform.keystore, json.loads(path.read_text(encoding="utf-8")),
                             now=datetime.now(UTC))  # fmt: skip
        reload_targets(platform)
        by_serial = {target.serial: target.meter_id for target in platform.collector.targets.values()}
        yield Site(platform, fleet, {m.index: by_serial[m.serial] for m in fleet.fleet.meters})
    finally:
        await stop_platform(platform)
        fleet.stop()


def _set_critical_care(engine: Engine, meter_id: int, flag: bool) -> None:
    sp = t.service_points
    premise = sa.select(sp.c.premise_id).join(t.meters, t.meters.c.service_point_id == sp.c.id)
    premise = premise.where(t.meters.c.id == meter_id).scalar_subquery()
    with engine.begin() as conn:
        conn.execute(sa.update(t.premises).where(t.premises.c.id == premise).values(critical_care=flag))


def _steps(workflow: workflows.Workflow) -> list[tuple[str, str]]:
    return [(s.step, s.outcome) for s in workflow.steps]


async def _workflow(platform: Platform, workflow_id: int) -> workflows.Workflow:
    return await asyncio.wait_for(workflows.run(platform, workflow_id), DEADLINE_S * 2)


async def test_move_out_move_in_backfeed_non_payment_reinstatement_load_shedding_and_limits(
    engine: Engine, site: Site
) -> None:
    platform, fleet, meter_of = site.platform, site.fleet, site.meter_of
    with engine.begin() as conn:
        conn.execute(sa.update(t.premises).values(critical_care=False))
    a, b, c, d, e = (meter_of[i] for i in range(5))

    # move-out at a set time: disconnect, verify, final read from the confirmation
    at = datetime.now(UTC) + timedelta(seconds=1)
    moved_out = await _workflow(platform, workflows.start_move_out(platform, OPERATOR, a, execute_at=at))
    assert moved_out.state == "completed", moved_out.failure_reason
    assert _steps(moved_out) == [("disconnect", "ok"), ("verify", "ok"), ("final-read", "ok")]
    assert "import" in moved_out.steps[-1].detail

    # move-in on the dead load side: read, backfeed check, reconnect, verify, confirm
    moved_in = await _workflow(platform, workflows.start_move_in(platform, CLERK, a))
    assert moved_in.state == "completed", moved_in.failure_reason
    assert _steps(moved_in) == [("read", "ok"), ("backfeed-check", "ok"), ("reconnect", "ok"), ("verify", "ok"),
                                ("confirm", "ok")]  # fmt: skip
    assert (await switch.read_state(platform, OPERATOR, a)).output_state is True

    # non-payment disconnect; never for a critical-care premises
    _set_critical_care(engine, e, True)
    with pytest.raises(CriticalCareRefused):
        workflows.start_non_payment(platform, CLERK, e)
    cut = await _workflow(platform, workflows.start_non_payment(platform, CLERK, b))
    assert cut.state == "completed", cut.failure_reason
    assert (await switch.read_state(platform, OPERATOR, b)).output_state is False

    # a generator feeds b's premises: move-in stops at the backfeed check, the switch stays open
    await asyncio.to_thread(fleet.control, "backfeed", [1], on=True)
    stopped = await _workflow(platform, workflows.start_move_in(platform, CLERK, b))
    assert (stopped.state, stopped.failure_step) == ("failed", "backfeed-check")
    assert "backfeed" in (stopped.failure_reason or "")
    assert _steps(stopped)[-1] == ("backfeed-check", "failed")
    assert (await switch.read_state(platform, OPERATOR, b)).output_state is False
    with engine.connect() as conn:
        kinds = conn.execute(sa.select(t.security_events.c.kind).where(t.security_events.c.meter_id == b)).scalars()
        assert "field.backfeed" in set(kinds)

    # paid: reinstated once the generator is off
    await asyncio.to_thread(fleet.control, "backfeed", [1], on=False)
    back = await _workflow(platform, workflows.start_reinstate(platform, CLERK, b))
    assert back.state == "completed", back.failure_reason
    assert (await switch.read_state(platform, OPERATOR, b)).output_state is True

    # load shedding: critical care spared, the others disconnected at shedding priority, then restored
    shed_id = workflows.start_shed(platform, OPERATOR, ShedTarget(meter_ids=(c, d, e)), mode="disconnect",
                                   reason="under-frequency")  # fmt: skip
    shed = await _workflow(platform, shed_id)
    assert shed.state == "completed", shed.failure_reason
    assert (shed.parameters["meters"], shed.parameters["spared"]) == ([c, d], [e])
    views = switch.list_commands(platform, OPERATOR, workflow=f"shed:{shed_id}")
    assert sorted((v.meter_id, v.status, v.priority) for v in views) == [
        (c, "confirmed", workflows.SHED_PRIORITY), (d, "confirmed", workflows.SHED_PRIORITY)
    ]  # fmt: skip
    assert (await switch.read_state(platform, OPERATOR, e)).output_state is True
    restored = await _workflow(platform, workflows.start_restore(platform, OPERATOR, shed_id))
    assert restored.state == "completed", restored.failure_reason
    for meter_id in (c, d):
        assert (await switch.read_state(platform, OPERATOR, meter_id)).output_state is True

    # limited demand on one meter: a signed limit with threshold and duration, verified in the meter
    limited = await _workflow(platform, workflows.start_limit(platform, OPERATOR, meter_of[5], threshold_w=2500,
                                                              duration_s=900))  # fmt: skip
    assert limited.state == "completed", limited.failure_reason
    assert _steps(limited) == [("limit", "ok"), ("verify", "ok")]


async def _until(predicate_name: str, check: object, deadline_s: float = DEADLINE_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert loop.time() < deadline, f"timed out waiting for {predicate_name}"
        await asyncio.sleep(0.05)


async def test_uncommanded_openings_in_one_area_put_its_meters_in_ignore_disconnects_mode_until_cleared(
    engine: Engine, site: Site
) -> None:
    platform, fleet, meter_of = site.platform, site.fleet, site.meter_of
    with engine.connect() as conn:
        areas = guard_db.areas_of(conn, meter_of.values())
    by_area: dict[str, list[int]] = {}
    for index, meter_id in sorted(meter_of.items()):
        area = areas[meter_id]
        if area is not None:
            by_area.setdefault(area, []).append(index)
    area, indices = max(by_area.items(), key=lambda item: len(item[1]))
    assert len(indices) >= 3, by_area
    area_meters = [meter_of[i] for i in indices]

    await asyncio.to_thread(fleet.control, "open-switch", indices[:3])  # nobody commanded these

    def alarm_open() -> bool:
        return bool(switch_guard.list_alarms(engine, SECURITY, state="open", now=datetime.now(UTC)))

    await _until("the alarm", alarm_open)
    (alarm,) = switch_guard.list_alarms(engine, SECURITY, state="open", now=datetime.now(UTC))
    assert (alarm.area, alarm.openings, alarm.ignore_disconnects_sent) == (area, 3, True)

    def mode_confirmed(on: bool) -> bool:
        sc = t.switch_commands.c
        command = "ignore-on" if on else "ignore-off"
        query = sa.select(sa.func.count()).where(sc.command == command, sc.status == "confirmed")
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one()) == len(area_meters)

    await _until("the ignore-disconnects mode in every meter of the area", lambda: mode_confirmed(True))
    for meter_id in area_meters:
        assert (await switch.read_state(platform, OPERATOR, meter_id)).ignore_disconnects is True
    with pytest.raises(switch_guard.IgnoringDisconnects):
        switch.submit(platform, OPERATOR, switch.CommandRequest(area_meters[-1], "disconnect", reason="test"))

    assert switch_guard.clear(platform, SECURITY, area, now=datetime.now(UTC)) == len(area_meters)
    await _until("the mode cleared in every meter", lambda: mode_confirmed(False))
    for meter_id in area_meters:
        assert (await switch.read_state(platform, OPERATOR, meter_id)).ignore_disconnects is False
    assert switch_guard.get_alarm(engine, SECURITY, alarm.id, now=datetime.now(UTC))[0].state == "cleared"


async def test_a_large_shed_waits_for_a_second_person_then_limits_and_is_restored(engine: Engine, site: Site) -> None:
    platform, meter_of = site.platform, site.meter_of
    with engine.begin() as conn:
        conn.execute(sa.update(t.premises).values(critical_care=False))
    switch_guard.configure(GuardSettings(approval_batch_size=2))  # this platform's process: 3 meters need approval
    targets = tuple(meter_of[i] for i in (6, 7, 8))
    shed_id = workflows.start_shed(platform, OPERATOR, ShedTarget(meter_ids=targets), mode="limit", threshold_w=1800,
                                   duration_s=600, reason="peak demand")  # fmt: skip
    running = asyncio.create_task(workflows.run(platform, shed_id))

    def held() -> bool:
        return workflows.get_workflow(platform, OPERATOR, shed_id).state == "awaiting-approval"

    await _until("the shed to wait for approval", held)
    (batch,) = switch_guard.list_batches(engine, SECURITY, now=datetime.now(UTC))
    with pytest.raises(switch_guard.SameApprover):
        switch_guard.approve_batch(platform, OPERATOR, batch.id)
    switch_guard.approve_batch(platform, SECURITY, batch.id)
    shed = await asyncio.wait_for(running, DEADLINE_S * 2)
    assert shed.state == "completed", shed.failure_reason
    assert [s.step for s in shed.steps] == ["select", "submit", "confirm"]
    assert "second approver" in shed.steps[1].detail
    for meter_id in targets:
        assert (await switch.read_state(platform, OPERATOR, meter_id)).active_threshold_w == 1800
    restored = await _workflow(platform, workflows.start_restore(platform, OPERATOR, shed_id))
    assert restored.state == "completed", restored.failure_reason
    views = switch.list_commands(platform, OPERATOR, workflow=f"restore:{restored.id}")
    assert sorted((v.command, v.status) for v in views) == [("cancel-limit", "confirmed")] * 3
