"""The OMS feed over REST and webhooks (both databases): outage list and detail, row-scoped for a
network operator, close and annotate; topology upload; webhook registration and signed deliveries to a
real HTTP receiver on loopback, retried after a failing first attempt."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openami.db import outages as repo
from openami.db import webhooks as webhook_repo
from openami.db.outages import AffectedMeter, NewOutage
from openami.domain.outages import DeviceKind, OutageState
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import identity as identity_services
from openami.services import webhooks as webhook_services
from openami.services.context import Platform
from openami.services.identity import NewAccount, RoleGrant
from openami.services.outage import changed
from openami.services.webhooks import WebhookDispatcher
from openami.settings import IdentitySettings, OutageSettings
from tests.integration.api.test_api import PROBLEM, TOKEN_ADMIN, _free_port, api  # noqa: F401 - the fixture

from .grid import add_grid_meters, feeder_meters, grid_csv

TOKEN_ADMIN_OPS = RequestScope("cli:test", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
FAST_IDENTITY = IdentitySettings(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1)


def _outage(platform: Platform, ids: list[int], feeder: str, area: str) -> int:
    meters = feeder_meters(ids, feeder)
    affected = [AffectedMeter(m, "dark", i % 3 == 0, f"P{m:04d}", False) for i, m in enumerate(meters)]
    now = datetime.now(UTC)
    outage = NewOutage(DeviceKind.FEEDER, feeder, area, OutageState.OPEN, now, "last-gasps")
    with platform.engine.begin() as conn:
        return repo.insert_outage(conn, outage, affected, now=now)


def _operator_token(platform: Platform, area: str) -> str:
    spec = NewAccount("dno-" + area.lower(), [RoleGrant(Role.NETWORK_OPERATOR, area)])
    identity_services.create_account(platform.engine, TOKEN_ADMIN, spec, settings=FAST_IDENTITY)
    return identity_services.issue_token(platform.engine, TOKEN_ADMIN, spec.username, ttl=None).token


async def test_topology_upload_then_outage_list_detail_close_and_annotate(
    api: tuple[str, Platform, str],  # noqa: F811
) -> None:
    base, platform, token = api
    ids = add_grid_meters(platform.engine)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        uploaded = await client.post("/v1/topology", content=grid_csv(), headers={"Content-Type": "text/csv"})
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["meters"] == len(ids)
        rejected = await client.post(
            "/v1/topology", content="kind,id,parent_id\nfeeder,F1,NOPE\n", headers={"Content-Type": "text/csv"}
        )
        assert rejected.status_code == 422
        assert rejected.headers["content-type"].startswith(PROBLEM)
        assert "row 2 (feeder F1): parent 'NOPE' is not in the file (dangling)" in rejected.json()["detail"]

        one = _outage(platform, ids, "SS1-F1", "SS1")
        two = _outage(platform, ids, "SS2-F2", "SS2")
        listed = (await client.get("/v1/outages")).json()
        assert [o["id"] for o in listed["items"]] == [two, one]
        assert listed["items"][0]["device_kind"] == "feeder"
        detail = (await client.get(f"/v1/outages/{one}")).json()
        assert len(detail["meters"]) == len(feeder_meters(ids, "SS1-F1"))
        assert detail["restoration_list"] == []
        assert (await client.get("/v1/outages/999999")).status_code == 404

        noted = await client.post(f"/v1/outages/{one}/notes", json={"text": "crew dispatched"})
        assert noted.status_code == 200
        assert noted.json()["version"] == 2
        closed = await client.post(f"/v1/outages/{one}/close", json={"note": "repaired"})
        assert closed.json()["state"] == "closed"
        assert (await client.post(f"/v1/outages/{one}/close")).status_code == 409
        detail = (await client.get(f"/v1/outages/{one}")).json()
        assert [n["text"] for n in detail["notes"]] == ["crew dispatched", "repaired"]
        assert [o["id"] for o in (await client.get("/v1/outages", params={"state": "open"})).json()["items"]] == [two]

    dno = _operator_token(platform, "SS2")  # a network operator of SS2 sees only SS2's outage
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {dno}"}) as client:
        assert [o["id"] for o in (await client.get("/v1/outages")).json()["items"]] == [two]
        assert (await client.get(f"/v1/outages/{one}")).status_code in (403, 404)
        assert (await client.post(f"/v1/outages/{two}/close")).status_code == 403
        topology = await client.post("/v1/topology", content=grid_csv(), headers={"Content-Type": "text/csv"})
        assert topology.status_code == 403


def _delivery_states(platform: Platform, webhook_id: int) -> list[str]:
    with platform.engine.connect() as conn:
        return [d.state for d in webhook_repo.deliveries(conn, webhook_id)]


class Receiver:
    """An HTTP receiver on loopback that fails its first request and records the rest."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls += 1
        status = 500 if self.calls == 1 else 204
        if status == 204:
            self.requests.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, Receiver]]:
    app = Receiver()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the receiver did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/hook", app
    finally:
        server.should_exit = True
        await task


async def test_webhooks_are_signed_retried_after_a_failure_and_recorded(
    api: tuple[str, Platform, str],  # noqa: F811
    receiver: tuple[str, Receiver],
) -> None:
    base, platform, token = api
    url, app = receiver
    ids = add_grid_meters(platform.engine)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        refused = await client.post("/v1/webhooks", json={"name": "oms", "url": "http://oms.example.com/hook"})
        assert refused.status_code == 422  # plain http only to a loopback receiver
        made = await client.post("/v1/webhooks", json={"name": "oms", "url": url})
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        listed = (await client.get("/v1/webhooks")).json()
        assert [w["name"] for w in listed] == ["oms"]
        assert "secret" not in listed[0]
    with platform.engine.connect() as conn:
        stored = webhook_repo.wrapped_secret(conn, made.json()["id"])
    assert secret.encode() not in stored  # wrapped under the master key

    settings = OutageSettings(webhook_backoff_s=0.1, webhook_attempts=3)
    dispatcher = WebhookDispatcher(platform.engine, platform.keystore, platform.bus, settings, now=platform.now)
    await dispatcher.start()
    try:
        outage_id = _outage(platform, ids, "SS1-F2", "SS1")
        with platform.engine.connect() as conn:
            record = repo.get_outage(conn, outage_id)
        await dispatcher.handle(changed(record, "opened", datetime.now(UTC)))
        await dispatcher.handle(changed(record, "opened", datetime.now(UTC)))  # a redelivered change: one delivery
        deadline = time.monotonic() + 15
        while _delivery_states(platform, made.json()["id"]) != ["delivered"]:  # recorded after the answer
            assert time.monotonic() < deadline, "no delivery was recorded as delivered"
            await asyncio.sleep(0.02)
    finally:
        await dispatcher.stop()
    assert app.calls == 2  # the first attempt failed (500), the retry was delivered
    headers, body = app.requests[0]
    assert webhook_services.verify_signature(
        secret.encode(), headers["x-openami-timestamp"], body, headers["x-openami-signature"]
    )
    assert not webhook_services.verify_signature(
        b"another secret", headers["x-openami-timestamp"], body, headers["x-openami-signature"]
    )
    assert b'"type":"outage.opened"' in body
    assert b'"device_id":"SS1-F2"' in body
    with platform.engine.connect() as conn:
        (delivery,) = webhook_repo.deliveries(conn, made.json()["id"])
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 2, 204)
    assert headers["x-openami-delivery"] == str(delivery.id)


async def test_a_burst_of_changes_reaches_every_endpoints_outbox_even_when_the_dispatcher_stops_at_once(
    api: tuple[str, Platform, str],  # noqa: F811
) -> None:
    _base, platform, _token = api
    ids = add_grid_meters(platform.engine)
    port = _free_port()  # nothing listens: the deliveries stay in the outbox (pending or failed)
    hooks = [
        webhook_services.register(platform, TOKEN_ADMIN_OPS, name=name, url=f"http://127.0.0.1:{port}/hook").webhook.id
        for name in ("oms", "dms")
    ]
    settings = OutageSettings(webhook_backoff_s=60, webhook_attempts=2)
    dispatcher = WebhookDispatcher(platform.engine, platform.keystore, platform.bus, settings, now=platform.now)
    await dispatcher.start()
    outage_id = _outage(platform, ids, "SS1-F2", "SS1")
    with platform.engine.connect() as conn:
        record = repo.get_outage(conn, outage_id)
    try:
        for version in range(1, 151):  # a storm's burst, handed over faster than it is written
            await dispatcher.handle(changed(dataclasses.replace(record, version=version), "updated", datetime.now(UTC)))
    finally:
        await dispatcher.stop()
    with platform.engine.connect() as conn:
        for hook in hooks:
            versions = sorted(delivery.outage_version for delivery in webhook_repo.deliveries(conn, hook, limit=1000))
            assert versions == list(range(1, 151))


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no trust store knows."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "untrusted receiver")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "receiver.pem", tmp_path / "receiver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_an_https_receiver_with_an_untrusted_certificate_gets_nothing(
    api: tuple[str, Platform, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _base, platform, _token = api
    ids = add_grid_meters(platform.engine)
    cert_file, key_file = _self_signed(tmp_path)
    app = Receiver()
    app.calls = 1  # answer 204 from the first request on: any request that arrives is a verification failure
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
        ssl_certfile=str(cert_file), ssl_keyfile=str(key_file),
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the receiver did not start"
        await asyncio.sleep(0.02)
    settings = OutageSettings(webhook_backoff_s=0.05, webhook_attempts=2)
    dispatcher = WebhookDispatcher(platform.engine, platform.keystore, platform.bus, settings, now=platform.now)
    made = webhook_services.register(platform, TOKEN_ADMIN_OPS, name="tls", url=f"https://127.0.0.1:{port}/hook")
    await dispatcher.start()
    try:
        outage_id = _outage(platform, ids, "SS1-F1", "SS1")
        with platform.engine.connect() as conn:
            record = repo.get_outage(conn, outage_id)
        await dispatcher.handle(changed(record, "opened", datetime.now(UTC)))
        deadline = time.monotonic() + 15
        while _delivery_states(platform, made.webhook.id) != ["failed"]:
            assert time.monotonic() < deadline, "the delivery was not given up"
            await asyncio.sleep(0.02)
    finally:
        await dispatcher.stop()
        server.should_exit = True
        await task
    assert app.requests == []
    with platform.engine.connect() as conn:
        (delivery,) = webhook_repo.deliveries(conn, made.webhook.id)
    assert delivery.attempts == 2
    assert delivery.last_status is None
    assert "ConnectError" in (delivery.last_error or "")
