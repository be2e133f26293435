"""Outage detection end to end: a simulated fleet in a worker process pushes last gasps and power-ups to
the platform's listener (``start_platform``), the outage engine locates a feeder fault from 30 % of the
last gasps, confirms it with real DLMS pings, and restoration verification lists the meters left dark.

The fleet's own grid is replaced by a topology file (``openami.services.topology``): 60 meters on one
substation, two feeders of three transformers of ten meters each.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from openami.db import outages as repo
from openami.db.meters import meter_ids_by_serial
from openami.db.outages import OutageRecord
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services.bootstrap import build_platform, reload_targets, start_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.services.topology import import_topology
from openami.settings import CollectionSettings, OutageSettings, PushSettings, Settings
from openami.sim.fleet import FleetConfig
from openami.sim.runner import start_fleet_processes
from openami.sim.scenarios import last_gasp_chosen, restore_chosen

OPERATOR = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
DEADLINE_S = 60.0
FAIL = {"last_gasp_share": 0.3, "seed": 4}
RESTORE = {"restore_share": 0.85, "seed": 6}


def _topology(serials: list[str]) -> str:
    rows = ["kind,id,parent_id,phase,name,premise_id,meter", "substation,E1,,,East,,"]
    for f in range(2):
        rows.append(f"feeder,E1-F{f + 1},E1,,,,")
        for x in range(3):
            transformer = f"E1-F{f + 1}-T{x + 1}"
            rows.append(f"transformer,{transformer},E1-F{f + 1},A,,,")
            for i in range(10):
                n = f * 30 + x * 10 + i
                rows.append(f"service_point,E-SP{n:03d},{transformer},A,{n} Grid Road,E-P{n:03d},{serials[n]}")
    return "\n".join(rows) + "\n"


async def _until(platform: Platform, what: str, check: object) -> list[OutageRecord]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        with platform.engine.connect() as conn:
            found = repo.list_outages(conn)
        if check(found):  # type: ignore[operator]
            return found
        assert loop.time() < deadline, f"timed out waiting for {what}: {found}"
        await asyncio.sleep(0.05)


async def test_a_feeder_fault_with_30_percent_last_gasps_is_located_and_restoration_lists_meters_left_dark(
    engine: Engine, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        collection=CollectionSettings(retries=0, timeout_s=2.0, catch_up_days=1),
        push=PushSettings(port=0),
        outages=OutageSettings(ping_timeout_s=1.0, restore_quiet_s=1.0, momentary_s=3.0),
    )
    platform = build_platform(settings, engine=engine)
    await start_platform(platform)
    assert platform.push_listener is not None
    assert platform.outages is not None
    host, port = platform.push_listener.address
    config = FleetConfig(meters=60, seed=31, flaky_fraction=0.0, drift_fraction=0.0, days=1, port=0,
                         push_host=host, push_port=port)  # fmt: skip
    fleet = await asyncio.to_thread(start_fleet_processes, config, processes=1, commissioning_path=tmp_path / "c.json")
    try:
        document = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
        import_commissioning(engine, platform.keystore, document, now=datetime.now(UTC))
        reload_targets(platform)
        serials = [m.serial for m in fleet.fleet.meters]
        import_topology(platform, OPERATOR, _topology(serials))  # the engine reloads its grid
        with engine.connect() as conn:
            ids = meter_ids_by_serial(conn, serials)
        # a momentary interruption of transformer E1-F1-T1: back after 0.2 s, recorded as momentary
        await asyncio.to_thread(fleet.control, "momentary", range(10), seconds=0.2, last_gasp_share=1.0)
        found = await _until(platform, "the momentary record", lambda f: any(o.state == "momentary" for o in f))
        assert [(str(o.device_kind), o.device_id, str(o.state)) for o in found] == [
            ("transformer", "E1-F1-T1", "momentary")
        ]

        feeder = list(range(30, 60))  # E1-F2
        gasping = [i for i in feeder if last_gasp_chosen(serials[i], FAIL)]
        assert 0 < len(gasping) < 15  # about 30 % get their last gasp out

        await asyncio.to_thread(fleet.control, "power-fail", feeder, **FAIL)
        found = await _until(platform, "the feeder outage", lambda f: any(o.state == "open" for o in f))
        (outage,) = [o for o in found if o.state != "momentary"]
        assert (str(outage.device_kind), outage.device_id, outage.area) == ("feeder", "E1-F2", "E1")
        assert outage.meters == 30
        assert outage.pings_sent > outage.pings_answered > 0  # pings inside stayed silent, around answered
        with engine.connect() as conn:
            affected = {m.meter_id: m for m in repo.affected_meters(conn, outage.id)}
        assert set(affected) == {ids[serials[i]] for i in feeder}
        assert {m for m, a in affected.items() if a.last_gasp} <= {ids[serials[i]] for i in gasping}

        await asyncio.to_thread(fleet.control, "power-restore", feeder, **RESTORE)
        left_dark = {ids[serials[i]] for i in feeder if not restore_chosen(serials[i], RESTORE)}
        assert left_dark  # some meters are left out of the restoration
        found = await _until(
            platform,
            "the restoration verification",
            lambda f: any(o.id == outage.id and o.state == "restored" for o in f),
        )
        with engine.connect() as conn:
            restored = repo.get_outage(conn, outage.id)
            still = {m.meter_id for m in repo.affected_meters(conn, outage.id, states=("still-dark",))}
        assert still == left_dark
        assert restored.still_dark == len(left_dark)
    finally:
        await stop_platform(platform)
        fleet.stop()
