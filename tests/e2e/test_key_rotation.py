"""Key rotation on a simulated fleet over TCP (issue 4): no meter is ever lost.

Meters in worker processes, the platform on SQLite and PostgreSQL. A group rotation while part of the
fleet is offline rotates (and proves) the reachable meters and leaves the others pending; when they
come back a later run rotates them. A meter that applies the key transfer but whose answer is lost
leaves the rotation uncertain; its next read tries the new keys first and settles it. Everything is
audited, and no key reaches a log line, an error or a repr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from openami.cli import main
from openami.db import key_rotations as reports
from openami.db.tables import audit_log, meter_keys
from openami.errors import InvalidInput
from openami.security.audit import verify
from openami.security.keystore import load_key_version, master_key_provider
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import keys as key_services
from openami.services.bootstrap import build_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.settings import CollectionSettings, Settings
from openami.sim.fleet import Fleet, FleetConfig, build_fleet
from openami.sim.runner import FleetHandle, start_fleet_processes

ADMIN = RequestScope(principal="user:sec-admin", roles=frozenset({Role.SECURITY_ADMIN}), scopes=frozenset({ALL_SCOPES}))
LOSSY = 1  # index of the meter that applies the key transfer but whose answer never arrives


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetHandle, Fleet]]:
    """10 reliable meters in two worker processes (meters 0-4 and 5-9); meter 1 loses its key-transfer answer."""
    built = build_fleet(FleetConfig(meters=10, seed=44, flaky_fraction=0.0, drift_fraction=0.0, days=2, port=0))
    meters = list(built.meters)
    meters[LOSSY] = dataclasses.replace(meters[LOSSY], lose_key_transfer_answer=True)
    built = dataclasses.replace(built, meters=tuple(meters))
    path = tmp_path_factory.mktemp("fleet") / "commissioning.json"
    handle = start_fleet_processes(built, processes=2, commissioning_path=path)
    try:
        yield handle, built
    finally:
        handle.stop()


def _settings(tmp_path: Path) -> Settings:
    collection = CollectionSettings(concurrency=8, retries=0, backoff_s=0.05, timeout_s=1.0, catch_up_days=1)
    return Settings(data_dir=tmp_path, collection=collection)


def _ids(platform: Platform) -> dict[str, int]:
    return {t.serial: t.meter_id for t in platform.collector.targets.values()}


def _take_offline(handle: FleetHandle) -> None:
    """Stop the second worker process: meters 5-9 no longer listen."""
    os.kill(handle.pids[1], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while handle.alive():  # poll with a deadline: the process exits on its own
        assert time.monotonic() < deadline, "the worker did not stop"
        time.sleep(0.02)


def _audit(engine: Engine) -> list[Any]:
    query = sa.select(audit_log.c.actor, audit_log.c.outcome, audit_log.c.resource, audit_log.c.details).where(
        audit_log.c.action == "keys.rotate"
    )
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(audit_log.c.seq)))


def _all_keys_hex(platform: Platform) -> set[str]:
    """Every key the platform holds for the fleet, any version, in hex (to look for in logs and errors)."""
    with platform.engine.connect() as conn:
        rows = conn.execute(sa.select(meter_keys.c.meter_id, meter_keys.c.key_kind, meter_keys.c.key_version)).all()
        return {load_key_version(conn, platform.keystore, m, k, v).hex() for m, k, v in rows}


async def test_group_rotation_with_offline_meters_and_a_lost_answer_loses_no_meter(
    engine: Engine, tmp_path: Path, fleet: tuple[FleetHandle, Fleet], capsys: pytest.CaptureFixture[str]
) -> None:
    handle, built = fleet
    assert handle.commissioning_path is not None
    document = json.loads(handle.commissioning_path.read_text(encoding="utf-8"))
    settings = _settings(tmp_path)
    import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    platform = build_platform(settings, engine=engine)
    ids = _ids(platform)
    online = [ids[m.serial] for m in handle.fleet.meters[:5]]
    offline = [ids[m.serial] for m in handle.fleet.meters[5:]]
    lossy = ids[handle.fleet.meters[LOSSY].serial]
    try:
        with structlog.testing.capture_logs() as logs:
            first = await platform.collector.collect(online)  # counters established with the old keys
            assert first.received == 5
            _take_offline(handle)

            # 1. rotate the whole group while meters 5-9 are offline
            rotation_id = key_services.request_rotation(platform, ADMIN, meter_ids=online + offline)
            outcomes = await key_services.run_rotation(platform, rotation_id)
            assert outcomes == {"rotated": 4, "pending": 5, "uncertain": 1, "failed": 0, "cancelled": 0}
            report = key_services.rotation_report(platform, ADMIN, rotation_id)
            assert report.counts == {"rotated": 4, "pending": 5, "uncertain": 1, "failed": 0, "cancelled": 0}
            states = {m.meter_id: m.state for m in report.meters}
            assert states[lossy] == "uncertain"
            assert all(states[m] == "pending" for m in offline)
            assert all(m.attempts == 1 and "associating" in (m.last_error or "") for m in report.meters
                       if m.meter_id in offline)  # fmt: skip
            assert platform.collector.targets[lossy].pending is not None

            # rotated meters are read with their new keys; their old keys are retired
            second = await platform.collector.collect([m for m in online if m != lossy])
            assert second.received == 4
            with engine.connect() as conn:
                for meter_id in online:
                    status = reports.key_status(conn, meter_id)
                    guek = {v.version: v.state for v in status.versions if v.kind == "guek"}
                    assert guek == ({1: "active", 2: "pending"} if meter_id == lossy else {1: "retired", 2: "active"})

            # 2. the lost answer: the next read tries the pending keys first and settles the rotation
            readings = await platform.collector.read_on_demand(lossy, hours=2)
            assert readings.meter_id == lossy
            assert platform.collector.targets[lossy].pending is None
            assert platform.collector.targets[lossy].key_version == 2
            report = key_services.rotation_report(platform, ADMIN, rotation_id)
            assert report.counts["rotated"] == 5
            assert report.counts["uncertain"] == 0

            # 3. the offline meters come back (same addresses, a fresh worker): after the next scheduled
            # collection the platform attempts the open rotations again, by itself
            back = dataclasses.replace(built, meters=handle.fleet.meters[5:])
            returned = start_fleet_processes(back, processes=1)
            try:
                assert await platform.scheduler.run_once() is not None
                deadline = asyncio.get_running_loop().time() + 30
                while not (report := key_services.rotation_report(platform, ADMIN, rotation_id)).finished:
                    assert asyncio.get_running_loop().time() < deadline, report.counts
                    await asyncio.sleep(0.05)
                assert report.counts == {"rotated": 10, "pending": 0, "uncertain": 0, "failed": 0, "cancelled": 0}
                assert report.finished

                # no meter lost: every meter answers a read with its new keys
                final = await platform.collector.collect(online + offline)
                assert (final.received, final.failed) == (10, 0)
            finally:
                returned.stop()
        secrets_hex = _all_keys_hex(platform)
    finally:
        await stop_platform(platform)

    # audited: the request, each meter's rotation (one settled by a read), all in a verifiable chain
    entries = _audit(engine)
    assert entries[0].actor == "user:sec-admin"
    assert entries[0].resource == f"rotation:{rotation_id}"
    rotated = [e for e in entries[1:] if e.outcome == "ok"]
    assert sorted(e.resource for e in rotated) == sorted(f"meter:{m}" for m in online + offline)
    assert sum('"via":"read"' in e.details for e in rotated) == 1
    with engine.connect() as conn:
        assert verify(conn, public_key=ec.generate_private_key(ec.SECP256R1()).public_key()).ok

    # no key, old or new, in logs, errors, audit details or reprs
    assert len(secrets_hex) == 10 * 5  # guek, gak (two versions each) and kek per meter
    captured = capsys.readouterr()
    texts = [repr(logs), captured.out, captured.err, repr(report), repr(platform.collector.targets)]
    texts += [m.last_error or "" for m in report.meters] + [e.details for e in entries]
    for text in texts:
        lowered = text.lower()
        assert not any(secret in lowered for secret in secrets_hex)
    assert any(event["event"] == "headend.keys.uncertain" for event in logs)
    assert any(event["event"] == "headend.keys.rotated" and event["via"] == "read" for event in logs)


async def test_emergency_rekey_of_a_feeder_goes_first_and_reports_per_meter(
    engine: Engine, tmp_path: Path, fleet: tuple[FleetHandle, Fleet]
) -> None:
    handle, _built = fleet
    assert handle.commissioning_path is not None
    document = json.loads(handle.commissioning_path.read_text(encoding="utf-8"))
    settings = _settings(tmp_path)
    import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    platform = build_platform(settings, engine=engine)
    try:
        feeder = document["feeders"][0]["id"]
        on_feeder = key_services.request_rotation(platform, ADMIN, feeder_id=feeder)
        others = key_services.request_rotation(platform, ADMIN, all_meters=True)  # joins the feeder's meters too
        emergency = key_services.request_rotation(platform, ADMIN, feeder_id=feeder, emergency=True)
        order: list[int] = []
        outcomes = await key_services.run_rotation(platform, progress=lambda r, _o: order.append(r.rotation_id))
        assert outcomes["failed"] == 0
        reports_ = [key_services.rotation_report(platform, ADMIN, r) for r in (on_feeder, others, emergency)]
        feeder_meters = reports_[2].counts["rotated"] + reports_[2].counts["uncertain"]
        assert feeder_meters >= 1
        assert sum(r.counts["rotated"] + r.counts["uncertain"] for r in reports_) == 10
        assert reports_[0].meters == []  # adopted by the later requests
        assert order[:feeder_meters] == [emergency] * feeder_meters  # the emergency re-key went out first
        assert reports_[2].emergency
        with pytest.raises(InvalidInput):
            key_services.request_rotation(platform, ADMIN, feeder_id=feeder, meter_ids=[1])
    finally:
        await stop_platform(platform)


def test_cli_rotates_meters_and_shows_their_key_versions(
    db_url: str, tmp_path: Path, fleet: tuple[FleetHandle, Fleet], monkeypatch: pytest.MonkeyPatch
) -> None:
    handle, _built = fleet
    assert handle.commissioning_path is not None
    monkeypatch.setenv("OPENAMI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPENAMI_DATABASE_URL", db_url)
    monkeypatch.setenv("OPENAMI_COLLECTION__TIMEOUT_S", "1.0")
    runner = CliRunner()
    assert runner.invoke(main, ["meters", "import", str(handle.commissioning_path)]).exit_code == 0
    serials = [m.serial for m in handle.fleet.meters]
    first, third = 1, 3  # meter ids follow the commissioning order; meter 2 is the one that loses its answer

    rotated = runner.invoke(main, ["keys", "rotate", "--meter", str(first), "--meter", str(third)])
    assert rotated.exit_code == 0, rotated.output
    assert "rotated" in rotated.output
    status = runner.invoke(main, ["keys", "status", "--meter", str(first), "--json"])
    assert status.exit_code == 0, status.output
    body = json.loads(status.stdout)
    assert body["serial"] == serials[0]
    assert {(v["kind"], v["version"], v["state"]) for v in body["versions"]} == {
        ("guek", 1, "retired"), ("guek", 2, "active"), ("gak", 1, "retired"), ("gak", 2, "active"),
        ("kek", 1, "active"),
    }  # fmt: skip
    lost = runner.invoke(main, ["keys", "rotate", "--meter", "2", "--json"])
    assert lost.exit_code == 3, lost.output  # uncertain: the next read or run settles it
    assert json.loads(lost.stdout)["counts"]["uncertain"] == 1
    retried = runner.invoke(main, ["keys", "rotate", "--retry", "--json"])
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["counts"]["rotated"] == 1
    table = runner.invoke(main, ["keys", "status"])
    assert table.exit_code == 0
    assert "key rotations" in table.output
    listing = runner.invoke(main, ["keys", "status", "--json"])
    assert [(r["target"], r["counts"]["rotated"]) for r in json.loads(listing.stdout)] == [
        ("meter:2", 1), ("meters:2", 2),
    ]  # fmt: skip
    assert runner.invoke(main, ["keys", "rotate"]).exit_code == 2
    assert runner.invoke(main, ["keys", "rotate", "--all", "--feeder", "X"]).exit_code == 2
    document = json.loads(handle.commissioning_path.read_text(encoding="utf-8"))
    for text in (rotated.output, status.output, lost.output, retried.output, listing.output):
        assert not any(key in text.lower() for m in document["meters"] for key in m["keys"].values())


async def test_two_runs_at_once_send_each_meter_its_keys_once(
    engine: Engine, tmp_path: Path, fleet: tuple[FleetHandle, Fleet]
) -> None:
    handle, _built = fleet
    assert handle.commissioning_path is not None
    document = json.loads(handle.commissioning_path.read_text(encoding="utf-8"))
    settings = _settings(tmp_path)
    import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    platform = build_platform(settings, engine=engine)
    try:
        ids = sorted(platform.collector.targets)
        healthy = [m for m in ids if platform.collector.targets[m].serial != handle.fleet.meters[LOSSY].serial]
        rotation_id = key_services.request_rotation(platform, ADMIN, meter_ids=healthy)
        first, second = await asyncio.gather(
            key_services.run_rotation(platform, rotation_id), key_services.run_rotation(platform, rotation_id)
        )
        assert (
            first["rotated"] == second["rotated"] == len(healthy)
        )  # each meter: rotated by one, found so by the other
        assert first["uncertain"] == second["uncertain"] == first["failed"] == second["failed"] == 0
        summary = await platform.collector.collect(healthy)
        assert (summary.received, summary.failed) == (len(healthy), 0)
    finally:
        await stop_platform(platform)
    proven = [e for e in _audit(engine) if e.resource.startswith("meter:")]
    assert len(proven) == len(healthy)
