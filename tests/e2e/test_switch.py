"""Signed switch and limiter commands on a simulated fleet over TCP (issue 5), SQLite and PostgreSQL.

Meters in worker processes pin the command authority's certificate. Commands go through the whole
platform: submit (policy, validation, guard, counter, signature, audit in one transaction), the queue,
the head-end's DLMS session, the meter's verification, the confirmation. A head-end holding only the
meters' ciphering keys cannot open a switch, a command signed by another key or replayed is refused
and reported, an offline meter's command expires with its reason, and bad requests are clear 4xx
problems.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.cli import main
from openami.db import commands as command_repo
from openami.db.tables import audit_log, meters, security_events, switch_commands
from openami.errors import NotFound
from openami.protocols.dlms.axdr import Integer
from openami.protocols.dlms.client import ClientSettings, DlmsClient
from openami.protocols.dlms.obis import DISCONNECT_CONTROL
from openami.protocols.dlms.session_errors import ServiceError
from openami.protocols.dlms.signed_command import Command, Envelope, Refusal, sign_envelope
from openami.security import command_authority as authority_core
from openami.security.keystore import load_meter_keys, master_key_provider
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import switch as switch_services
from openami.services.bootstrap import build_platform, ensure_admin_token, start_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.services.pki import ca_files
from openami.services.switch import CommandConflict, CommandRequest, IdempotencyKeyReused, LimitParameters
from openami.settings import CollectionSettings, PushSettings, Settings, SwitchSettings
from openami.sim.fleet import FleetConfig
from openami.sim.runner import FleetHandle, start_fleet_processes

OPERATOR = RequestScope(principal="user:ops", roles=frozenset({Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES}))
WAIT_S = 20.0


def _settings(tmp_path: Path) -> Settings:
    collection = CollectionSettings(concurrency=8, retries=0, backoff_s=0.05, timeout_s=1.0, catch_up_days=1)
    switch = SwitchSettings(poll_s=0.05, retry_backoff_s=0.2, max_backoff_s=0.5)
    # no push listener: its fixed port could collide with another test's platform
    return Settings(data_dir=tmp_path, collection=collection, switch=switch, push=PushSettings(enabled=False))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path)


@pytest.fixture
def authority_pem(engine: Engine, settings: Settings) -> str:
    """The command authority, created in the test's database before the fleet starts (meters pin it)."""
    with engine.begin() as conn:
        created = authority_core.load_or_create(
            conn, master_key_provider(settings), ca_files(settings), now=datetime.now(UTC)
        )
    return created.certificate_pem


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory, authority_pem: str) -> Iterator[FleetHandle]:
    """8 reliable meters in two worker processes (meters 0-3 and 4-7), pinning the authority's certificate."""
    config = FleetConfig(meters=8, seed=55, flaky_fraction=0.0, drift_fraction=0.0, days=2, port=0,
                         authority_certificate_pem=authority_pem)  # fmt: skip
    path = tmp_path_factory.mktemp("fleet") / "commissioning.json"
    handle = start_fleet_processes(config, processes=2, commissioning_path=path)
    try:
        yield handle
    finally:
        handle.stop()


async def _platform(engine: Engine, settings: Settings, handle: FleetHandle) -> Platform:
    assert handle.commissioning_path is not None
    document = json.loads(handle.commissioning_path.read_text(encoding="utf-8"))
    import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    platform = build_platform(settings, engine=engine)
    await start_platform(platform)
    return platform


def _ids(platform: Platform, handle: FleetHandle) -> list[int]:
    by_serial = {t.serial: t.meter_id for t in platform.collector.targets.values()}
    return [by_serial[m.serial] for m in handle.fleet.meters]


async def _run(platform: Platform, request: CommandRequest, key: str | None = None) -> switch_services.CommandView:
    view = switch_services.submit(platform, OPERATOR, request, idempotency_key=key)
    return await switch_services.wait_for(platform, view.id, WAIT_S)


def _audited(engine: Engine, meter_id: int) -> list[tuple[str, str, Any]]:
    query = sa.select(audit_log.c.action, audit_log.c.outcome, audit_log.c.details).where(
        audit_log.c.resource == f"meter:{meter_id}", audit_log.c.action.like("switch.%")
    )
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query.order_by(audit_log.c.seq))]


def _events(engine: Engine, meter_id: int) -> list[str]:
    query = sa.select(security_events.c.details).where(
        security_events.c.kind == "meter.command-refused", security_events.c.meter_id == meter_id
    )
    with engine.connect() as conn:
        return [str(d) for d in conn.execute(query.order_by(security_events.c.id)).scalars()]


async def test_disconnect_reconnect_limit_and_state_are_signed_confirmed_and_audited(
    engine: Engine, settings: Settings, fleet: FleetHandle
) -> None:
    platform = await _platform(engine, settings, fleet)
    try:
        a, b, c = _ids(platform, fleet)[:3]

        # disconnect: confirmed with the switch state, voltage, current and the final register read
        done = await _run(platform, CommandRequest(a, "disconnect", reason="move-out"))
        assert done.status == "confirmed", done.failure_reason
        assert done.output_state is False
        assert done.control_state == 0
        assert done.voltage_v is not None
        assert done.voltage_v > 100
        assert done.current_a == 0.0
        assert done.load_side_voltage_v is not None
        assert done.load_side_voltage_v < 10
        assert done.final_import_wh is not None
        assert done.final_import_wh > 0
        assert done.final_read_at is not None
        state = await switch_services.read_state(platform, OPERATOR, a)
        assert state.output_state is False
        assert state.control_state == 0
        assert state.last_counter == done.counter

        # reconnect at once
        again = await _run(platform, CommandRequest(a, "reconnect", reason="move-in"))
        assert again.status == "confirmed"
        assert again.output_state is True
        assert again.control_state == 1
        assert again.counter > done.counter
        assert again.final_import_wh is None  # only a disconnect reads the final registers

        # armed reconnect: ready for the customer to close it
        assert (await _run(platform, CommandRequest(b, "disconnect"))).status == "confirmed"
        armed = await _run(platform, CommandRequest(b, "reconnect-arm"))
        assert armed.status == "confirmed"
        assert armed.control_state == 2
        assert armed.output_state is False

        # load limit, then its cancellation
        limit = LimitParameters(threshold_w=20_000, duration_s=60)
        limited = await _run(platform, CommandRequest(c, "limit", limit=limit))
        assert limited.status == "confirmed"
        assert limited.active_threshold_w == 20_000
        assert (await switch_services.read_state(platform, OPERATOR, c)).active_threshold_w == 20_000
        cancelled = await _run(platform, CommandRequest(c, "cancel-limit"))
        assert cancelled.status == "confirmed"
        assert cancelled.active_threshold_w is None

        # duplicate submission with the same idempotency key: one command
        first = switch_services.submit(platform, OPERATOR, CommandRequest(c, "disconnect"), idempotency_key="k-1")
        second = switch_services.submit(platform, OPERATOR, CommandRequest(c, "disconnect"), idempotency_key="k-1")
        assert second.id == first.id
        with pytest.raises(IdempotencyKeyReused):
            switch_services.submit(platform, OPERATOR, CommandRequest(c, "reconnect"), idempotency_key="k-1")
        with engine.connect() as conn:
            count = sa.select(sa.func.count()).where(switch_commands.c.meter_id == c,
                                                     switch_commands.c.command == "disconnect")  # fmt: skip
            assert conn.execute(count).scalar_one() == 1
        assert (await switch_services.wait_for(platform, first.id, WAIT_S)).status == "confirmed"

        # every command audited: its submission and each status change
        audited = _audited(engine, a)
        assert [row[0] for row in audited].count("switch.disconnect") == 1
        assert [row[0] for row in audited].count("switch.reconnect") == 1
        statuses = [json.loads(row[2])["status"] if isinstance(row[2], str) else row[2]["status"]
                    for row in audited if row[0] == "switch.status"]  # fmt: skip
        assert statuses == ["sent", "confirmed", "sent", "confirmed"]

        # a command overtaken by a later one for the same meter is signed again with a fresh counter
        soon = datetime.now(UTC) + timedelta(seconds=2)
        later_limit = switch_services.submit(
            platform, OPERATOR, CommandRequest(b, "limit", limit=LimitParameters(9_000, 30), execute_at=soon)
        )
        overtaking = await _run(platform, CommandRequest(b, "reconnect"))
        assert overtaking.status == "confirmed"
        assert overtaking.counter > later_limit.counter
        resigned = await switch_services.wait_for(platform, later_limit.id, WAIT_S)
        assert resigned.status == "confirmed", resigned.failure_reason
        assert resigned.counter > overtaking.counter
        assert any(row[0] == "switch.resign" for row in _audited(engine, b))
    finally:
        await stop_platform(platform)


def _take_offline(handle: FleetHandle) -> None:
    """Stop the second worker process: meters 4-7 no longer listen."""
    os.kill(handle.pids[1], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while handle.alive():  # poll with a deadline: the process exits on its own
        assert time.monotonic() < deadline, "the worker did not stop"
        time.sleep(0.02)


async def test_an_offline_meter_keeps_its_command_queued_until_it_expires_with_the_reason(
    engine: Engine, settings: Settings, fleet: FleetHandle
) -> None:
    platform = await _platform(engine, settings, fleet)
    try:
        offline = _ids(platform, fleet)[5]
        _take_offline(fleet)
        view = switch_services.submit(platform, OPERATOR, CommandRequest(offline, "disconnect", valid_for_s=10))
        deadline = time.monotonic() + 8
        seen: set[str] = set()
        while time.monotonic() < deadline:  # retried while the meter does not answer
            current = switch_services.get_command(platform, OPERATOR, view.id)
            seen.add(current.status)
            if current.attempts >= 2:
                break
            await asyncio.sleep(0.05)
        assert current.attempts >= 2
        assert current.status in ("queued", "sent")
        assert current.failure_reason is not None  # the last attempt's error, while still queued
        final = await switch_services.wait_for(platform, view.id, 30)
        assert final.status == "expired"
        assert final.failure_reason is not None
        assert "did not answer" in final.failure_reason
        assert final.expired_at is not None
        assert final.output_state is None
    finally:
        await stop_platform(platform)


async def test_a_head_end_with_only_the_ciphering_keys_cannot_open_a_switch(
    engine: Engine, settings: Settings, fleet: FleetHandle
) -> None:
    platform = await _platform(engine, settings, fleet)
    try:
        meter, other = _ids(platform, fleet)[:2]
        target = platform.collector.targets[meter]
        with engine.connect() as conn:
            keys = load_meter_keys(conn, platform.keystore, meter)

        # 1. Disconnect Control invoked directly, with the meter's own keys from the keystore
        async with platform.collector.meter_lock(meter):
            counters = await platform.collector.reserve_block(meter, target.key_version)
            direct = DlmsClient(ClientSettings.management(
                target.host, target.port, system_title=settings.headend.system_title, guek=keys.guek, gak=keys.gak,
                invocation_counter=counters.client_ic_next,
                server_invocation_counter=-1 if counters.server_ic_last is None else counters.server_ic_last,
            ))  # fmt: skip
            async with direct:
                with pytest.raises(ServiceError):
                    await direct.action(DISCONNECT_CONTROL, 70, 1, Integer(0))
            await platform.collector.counters.record(
                meter, client_ic_next=direct.client_invocation_counter,
                server_ic_last=direct.server_invocation_counter, key_version=target.key_version,
            )  # fmt: skip

        # 2. the gateway, with a command signed by a key that is not the authority's
        forger = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        with engine.begin() as conn:
            counter = authority_core.take_counter(conn)
        forged = sign_envelope(
            Envelope(
                target.system_title, Command.DISCONNECT, counter, now - timedelta(minutes=1), now + timedelta(minutes=5)
            ),
            forger,
        )
        executor = switch_services._executor(platform)
        outcome = await executor.execute(meter, forged, final_read=True)
        assert outcome.refusal is Refusal.BAD_SIGNATURE
        assert not outcome.confirmed
        state = await switch_services.read_state(platform, OPERATOR, meter)
        assert state.output_state is True
        assert state.control_state == 1
        assert any("bad-signature" in e for e in _events(engine, meter))

        # 3. a captured, already executed signed command, replayed: refused as replayed and reported
        done = await _run(platform, CommandRequest(other, "disconnect"))
        assert done.status == "confirmed"
        assert (await _run(platform, CommandRequest(other, "reconnect"))).status == "confirmed"
        with engine.connect() as conn:
            captured = command_repo.get_command(conn, done.id)
        with engine.begin() as conn:  # what a compromised head-end (or its database) could send again
            values = {c.name: getattr(captured, c.name) for c in switch_commands.columns if c.name != "id"}
            values |= {"status": "queued", "counter": authority_core.take_counter(conn), "request_hash": "replay",
                       "sent_at": None, "confirmed_at": None, "attempts": 0, "output_state": None,
                       "idempotency_key": None, "next_attempt_at": datetime.now(UTC)}  # fmt: skip
            replay_id = command_repo.insert_command(conn, values)
        assert platform.commands is not None
        platform.commands.submitted([])  # wake the queue
        replayed = await switch_services.wait_for(platform, replay_id, WAIT_S)
        assert replayed.status == "failed"
        assert replayed.refusal == "replayed"
        assert replayed.failure_reason is not None
        assert "replayed" in replayed.failure_reason
        assert any("replayed" in e for e in _events(engine, other))
        assert (await switch_services.read_state(platform, OPERATOR, other)).output_state is True
    finally:
        await stop_platform(platform)


async def test_bad_requests_are_clear_problems_and_nothing_is_half_written(
    engine: Engine, settings: Settings, fleet: FleetHandle
) -> None:
    platform = await _platform(engine, settings, fleet)
    token = ensure_admin_token(engine, now=datetime.now(UTC))
    assert token is not None
    try:
        meter = _ids(platform, fleet)[2]
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        headers = {"Authorization": f"Bearer {token}"}
        with TestClient(create_app(platform)) as api:
            unknown = api.post("/v1/meters/999999/disconnect", headers=headers, json={"reason": "x"})
            assert unknown.status_code == 404
            assert unknown.headers["content-type"].startswith("application/problem+json")

            queued = api.post(f"/v1/meters/{meter}/disconnect", headers={**headers, "Idempotency-Key": "a-1"},
                              json={"reason": "move-out", "execute_at": later})  # fmt: skip
            assert queued.status_code == 202, queued.text
            assert queued.headers["location"] == f"/v1/commands/{queued.json()['id']}"
            assert queued.json()["status"] == "queued"
            repeated = api.post(f"/v1/meters/{meter}/disconnect", headers={**headers, "Idempotency-Key": "a-1"},
                                json={"reason": "move-out", "execute_at": later})  # fmt: skip
            assert repeated.status_code == 202
            assert repeated.json()["id"] == queued.json()["id"]

            conflict = api.post(f"/v1/meters/{meter}/reconnect", headers=headers, json={})
            assert conflict.status_code == 409
            assert conflict.json()["type"].endswith("/command-in-flight")

            for body in ({"threshold_w": 0, "duration_s": 60}, {"threshold_w": 5000, "duration_s": -1}):
                invalid = api.post(f"/v1/meters/{meter}/limit", headers=headers, json=body)
                assert invalid.status_code == 422
                assert invalid.headers["content-type"].startswith("application/problem+json")
            in_the_past = {"threshold_w": 5000, "duration_s": 60, "execute_at": "2020-01-01T00:00:00Z"}
            past = api.post(f"/v1/meters/{meter}/limit", headers=headers, json=in_the_past)
            assert past.status_code == 422
            assert "past" in past.json()["detail"]

            gas = _ids(platform, fleet)[3]
            with engine.begin() as conn:  # a gas meter has no supply switch
                conn.execute(sa.update(meters).where(meters.c.id == gas).values(kind="gas"))
            no_switch = api.post(f"/v1/meters/{gas}/disconnect", headers=headers, json={})
            assert no_switch.status_code == 422
            assert no_switch.json()["type"].endswith("/meter-has-no-switch")

            cancel = api.post(f"/v1/commands/{queued.json()['id']}/cancel", headers=headers)
            assert cancel.status_code == 200
            assert cancel.json()["status"] == "cancelled"
            assert api.post(f"/v1/commands/{queued.json()['id']}/cancel", headers=headers).status_code == 409
            listed = api.get("/v1/commands", headers=headers, params={"meter_id": meter})
            assert [c["status"] for c in listed.json()["items"]] == ["cancelled"]
            assert api.get("/v1/commands/987654", headers=headers).status_code == 404

        with engine.connect() as conn:  # refusals wrote no command, but were audited
            assert conn.execute(sa.select(sa.func.count()).select_from(switch_commands)).scalar_one() == 1
            refused = conn.execute(sa.select(audit_log.c.action, audit_log.c.resource).where(
                audit_log.c.outcome == "failed", audit_log.c.action.like("switch.%"))).all()  # fmt: skip
        assert ("switch.disconnect", "meter:999999") in [tuple(r) for r in refused]
        assert any(r[0] == "switch.reconnect" for r in refused)
        assert any(r[0] == "switch.limit" for r in refused)
        with pytest.raises(NotFound):
            switch_services.submit(platform, OPERATOR, CommandRequest(999_999, "disconnect"))
        later_limit = CommandRequest(
            meter, "limit", limit=LimitParameters(10, 1), execute_at=datetime.now(UTC) + timedelta(hours=1)
        )
        switch_services.submit(platform, OPERATOR, later_limit)
        with pytest.raises(CommandConflict):
            switch_services.submit(platform, OPERATOR, CommandRequest(meter, "cancel-limit"))
    finally:
        await stop_platform(platform)


def test_the_cli_disconnects_reconnects_and_shows_state_and_status(
    engine: Engine, settings: Settings, fleet: FleetHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fleet.commissioning_path is not None
    document = json.loads(fleet.commissioning_path.read_text(encoding="utf-8"))
    ids = import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    meter = ids[fleet.fleet.meters[0].serial]
    monkeypatch.setenv("OPENAMI_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("OPENAMI_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("OPENAMI_PUSH__ENABLED", "false")
    monkeypatch.setenv("OPENAMI_SWITCH__POLL_S", "0.05")
    runner = CliRunner()

    opened = runner.invoke(main, ["switch", "disconnect", str(meter), "--reason", "move-out", "--json"])
    assert opened.exit_code == 0, opened.output
    command = json.loads(opened.stdout)
    assert command["status"] == "confirmed"
    assert command["output_state"] is False
    assert command["final_import_wh"] is not None

    state = runner.invoke(main, ["switch", "state", str(meter), "--json"])
    assert state.exit_code == 0, state.output
    assert json.loads(state.stdout)["control_state"] == 0

    armed = runner.invoke(main, ["switch", "reconnect", str(meter), "--armed", "--json"])
    assert armed.exit_code == 0
    assert json.loads(armed.stdout)["control_state"] == 2

    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    queued = runner.invoke(main, ["switch", "limit", str(meter), "--threshold", "4000", "--duration", "30",
                                  "--at", later, "--no-wait", "--json"])  # fmt: skip
    assert queued.exit_code == 3
    assert json.loads(queued.stdout)["status"] == "queued"
    limit_id = json.loads(queued.stdout)["id"]
    status = runner.invoke(main, ["switch", "status", str(limit_id), "--json"])
    assert status.exit_code == 3
    assert json.loads(status.stdout)["status"] == "queued"
    assert runner.invoke(main, ["switch", "cancel", str(limit_id)]).exit_code == 0
    listed = runner.invoke(main, ["switch", "list", "--meter", str(meter), "--json"])
    assert [c["status"] for c in json.loads(listed.stdout)] == ["cancelled", "confirmed", "confirmed"]

    unknown = runner.invoke(main, ["switch", "disconnect", "999999"])
    assert unknown.exit_code == 1
    assert "does not exist" in unknown.output


async def test_a_command_left_sent_by_a_stopped_process_is_settled_from_the_meter(
    engine: Engine, settings: Settings, fleet: FleetHandle
) -> None:
    """The meter executed the command but its sender stopped before recording it: the queue sends it again,
    the meter refuses the resend as replayed, and its last accepted counter shows the command was executed."""
    quick = settings.model_copy(update={"switch": settings.switch.model_copy(update={"stale_sent_s": 1.0})})
    platform = await _platform(engine, quick, fleet)
    try:
        meter = _ids(platform, fleet)[1]
        done = await _run(platform, CommandRequest(meter, "disconnect"))
        assert done.status == "confirmed"
        with engine.begin() as conn:  # as the stopped process left it: sent, outcome not recorded
            conn.execute(
                sa.update(switch_commands)
                .where(switch_commands.c.id == done.id)
                .values(status="sent", confirmed_at=None, output_state=None, control_state=None,
                        updated_at=datetime.now(UTC) - timedelta(hours=1))
            )  # fmt: skip
        assert platform.commands is not None
        platform.commands.submitted([])
        settled = await switch_services.wait_for(platform, done.id, WAIT_S)
        assert settled.status == "confirmed"
        assert settled.attempts == 2
        assert settled.output_state is False
        assert settled.control_state == 0
        assert any("replayed" in e for e in _events(engine, meter))  # the resend was refused (and reported)
    finally:
        await stop_platform(platform)
