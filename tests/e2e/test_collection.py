"""Walking skeleton end to end: simulated fleet → head-end collection over DLMS → bus → MDM → storage.

Runs on SQLite and on PostgreSQL (the ``engine`` fixture), against meters in other processes over
real loopback sockets, with the real protocol on both sides.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import collection as runs_repo
from openami.db import comm_errors
from openami.db import counters as counter_repo
from openami.db import meters as meter_repo
from openami.db.tables import interval_reading_versions, interval_readings
from openami.domain.codes import SourceCode
from openami.domain.readings import Quality
from openami.headend.reader import INTERVAL_S
from openami.security.keystore import master_key_provider
from openami.services.bootstrap import build_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.settings import CollectionSettings, Settings
from openami.sim.fleet import FaultKind
from openami.sim.runner import FleetHandle

CATCH_UP_DAYS = 2


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        collection=CollectionSettings(
            concurrency=32, retries=1, backoff_s=0.05, timeout_s=1.5, catch_up_days=CATCH_UP_DAYS
        ),
    )


async def _platform(engine: Engine, settings: Settings, document: dict[str, Any]) -> Platform:
    import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    return build_platform(settings, engine=engine)


@pytest.fixture
async def platform(engine: Engine, tmp_path: Path, commissioning: dict[str, Any]) -> AsyncIterator[Platform]:
    p = await _platform(engine, _settings(tmp_path), commissioning)
    try:
        yield p
    finally:
        await stop_platform(p)


def _healthy_serials(fleet: FleetHandle) -> set[str]:
    """Meters that answer promptly with a correct clock."""
    return {m.serial for m in fleet.fleet.meters if m.fault is None and not m.clock_offset_s}


def _ids(engine: Engine, serials: set[str]) -> dict[str, int]:
    with engine.connect() as conn:
        return meter_repo.meter_ids_by_serial(conn, sorted(serials))


def _stored_counts(engine: Engine) -> dict[int, int]:
    query = sa.select(interval_readings.c.meter_id, sa.func.count()).group_by(interval_readings.c.meter_id)
    with engine.connect() as conn:
        return {int(m): int(n) for m, n in conn.execute(query)}


async def test_collection_stores_every_interval_of_every_healthy_meter(platform: Platform, fleet: FleetHandle) -> None:
    started = datetime.now(UTC)
    summary = await platform.collector.collect(sorted(platform.collector.targets))
    await platform.bus.drain()
    await platform.ingestor.flush()

    healthy = _ids(platform.engine, _healthy_serials(fleet))
    assert summary.received >= len(healthy)
    with platform.engine.connect() as conn:  # the collection status the API shows
        run = runs_repo.get_run(conn, summary.run_id)
    assert (run.expected, run.received, run.failed) == (60, summary.received, summary.failed)
    assert run.finished_at is not None
    counts = _stored_counts(platform.engine)
    floor = int((started - timedelta(days=CATCH_UP_DAYS)).timestamp())
    expected_intervals = (int(started.timestamp()) // INTERVAL_S) - (floor // INTERVAL_S)
    for serial, meter_id in healthy.items():
        # both channels of every interval from the catch-up floor to now: nothing missing, nothing twice
        assert counts.get(meter_id, 0) in (2 * expected_intervals, 2 * (expected_intervals + 1)), serial
    with platform.engine.connect() as conn:
        flags = conn.execute(
            sa.select(interval_readings.c.quality).where(interval_readings.c.meter_id.in_(list(healthy.values())))
        ).scalars()
        assert not any(q & (Quality.REGISTER_MISMATCH | Quality.NEGATIVE | Quality.ESTIMATED) for q in flags)


async def test_meters_with_drifting_clocks_have_their_values_flagged_clock_error(
    platform: Platform, fleet: FleetHandle
) -> None:
    drifting = {m.serial for m in fleet.fleet.meters if m.fault is None and abs(m.clock_offset_s) > 60}
    assert drifting, "the fleet fixture must contain drifting meters"
    await platform.collector.collect(sorted(platform.collector.targets))
    await platform.bus.drain()
    await platform.ingestor.flush()
    with platform.engine.connect() as conn:
        for serial, meter_id in _ids(platform.engine, drifting).items():
            measured = sa.select(interval_readings.c.quality).where(
                interval_readings.c.meter_id == meter_id, interval_readings.c.source == int(SourceCode.METER)
            )
            flags = conn.execute(measured).scalars().all()
            assert flags, serial
            assert all(q & Quality.CLOCK_ERROR for q in flags), serial


async def test_silent_meters_are_retried_and_reported_with_step_and_cause(
    platform: Platform, fleet: FleetHandle
) -> None:
    silent = {m.serial for m in fleet.fleet.meters if m.fault is FaultKind.SILENT}
    assert silent, "the fleet fixture must contain silent meters"
    await platform.collector.collect(sorted(platform.collector.targets))
    ids = _ids(platform.engine, silent)
    with platform.engine.connect() as conn:
        for serial, meter_id in ids.items():
            errors = comm_errors.list_comm_errors(conn, meter_id=meter_id)
            assert errors, f"no communication error recorded for silent meter {serial}"
            assert errors[0].step
            assert "did not answer" in errors[0].cause
        healthy = _ids(platform.engine, _healthy_serials(fleet))
        for meter_id in healthy.values():
            assert not comm_errors.list_comm_errors(conn, meter_id=meter_id)


async def test_restart_mid_collection_loses_nothing_and_duplicates_nothing(
    engine: Engine, tmp_path: Path, commissioning: dict[str, Any], fleet: FleetHandle
) -> None:
    settings = _settings(tmp_path)
    first = await _platform(engine, settings, commissioning)
    meter_ids = sorted(first.collector.targets)
    task = asyncio.create_task(first.collector.collect(meter_ids))
    deadline = asyncio.get_running_loop().time() + 30
    while len(_stored_counts(engine)) < len(meter_ids) // 4:  # a quarter stored, then "crash"
        assert asyncio.get_running_loop().time() < deadline, "collection made no progress"
        await first.ingestor.flush()
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await stop_platform(first)

    second = build_platform(settings, engine=engine)
    try:
        await second.collector.collect(meter_ids)
        await second.bus.drain()
        await second.ingestor.flush()
    finally:
        await stop_platform(second)

    healthy = _ids(engine, _healthy_serials(fleet))
    counts = _stored_counts(engine)
    now = int(datetime.now(UTC).timestamp())
    floor = now - CATCH_UP_DAYS * 86_400
    expected = now // INTERVAL_S - floor // INTERVAL_S
    for meter_id in healthy.values():
        assert counts.get(meter_id, 0) in (2 * expected, 2 * (expected + 1), 2 * (expected - 1))
    with engine.connect() as conn:  # a re-read of the same values added no version
        assert conn.execute(sa.select(sa.func.count()).select_from(interval_reading_versions)).scalar_one() == 0


async def test_values_from_a_meter_whose_authentication_fails_are_never_stored(
    engine: Engine, tmp_path: Path, commissioning: dict[str, Any], fleet: FleetHandle
) -> None:
    document = copy.deepcopy(commissioning)
    victim = next(m for m in document["meters"] if m["serial"] in _healthy_serials(fleet))
    victim["keys"]["gak"] = "00" * 16  # the platform holds a wrong authentication key for this meter
    p = await _platform(engine, _settings(tmp_path), document)
    try:
        meter_id = _ids(engine, {victim["serial"]})[victim["serial"]]
        await p.collector.collect([meter_id])
        await p.bus.drain()
        await p.ingestor.flush()
        assert _stored_counts(engine).get(meter_id, 0) == 0
        with engine.connect() as conn:
            errors = comm_errors.list_comm_errors(conn, meter_id=meter_id)
        assert errors
        assert "authentication" in errors[0].cause or "rejected" in errors[0].cause
        assert victim["keys"]["guek"] not in errors[0].cause
    finally:
        await stop_platform(p)


async def test_on_demand_reads_during_a_collection_never_trip_the_meters_replay_protection(
    platform: Platform, fleet: FleetHandle
) -> None:
    healthy = sorted(_ids(platform.engine, _healthy_serials(fleet)).values())[:10]
    bulk = asyncio.create_task(platform.collector.collect(healthy))
    on_demand = await asyncio.gather(*(platform.collector.read_on_demand(m, hours=1) for m in healthy))
    summary = await bulk
    assert summary.failed == 0
    assert all(r.interval_ends for r in on_demand)
    with platform.engine.connect() as conn:
        for meter_id in healthy:
            assert not comm_errors.list_comm_errors(conn, meter_id=meter_id)


async def test_an_on_demand_read_returns_before_its_counters_are_committed_and_its_meter_waits_for_them(
    platform: Platform, fleet: FleetHandle
) -> None:
    meter_id = sorted(_ids(platform.engine, _healthy_serials(fleet)).values())[0]
    lock = platform.collector.meter_lock(meter_id)
    recorded: list[int | None] = []
    for _ in range(3):
        assert (await platform.collector.read_on_demand(meter_id, hours=1)).interval_ends
        assert lock.locked()  # the session's counters are still being committed, behind the meter's lock
        async with lock:  # as the meter's next session does, this waits for them
            with platform.engine.connect() as conn:
                recorded.append(counter_repo.get(conn, meter_id).server_ic_last)
    assert recorded[0] is not None
    assert recorded == sorted(set(recorded))  # each session's answer counter, recorded before the next began
    with platform.engine.connect() as conn:
        assert not comm_errors.list_comm_errors(conn, meter_id=meter_id)
