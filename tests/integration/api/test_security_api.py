"""GET /v1/audit, security events and alerts over a real loopback socket, on SQLite and PostgreSQL.

Filters are validated: injection attempts, oversized values and unknown parameters give 422 problem
details (or nothing found), never a 500; a refused caller gets 403 and the refusal is audited.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.security import audit, events
from openami.security import identity as ident
from openami.security.audit_keys import EcdsaAuditSigner
from openami.security.identity import NewAccount, RoleGrant
from openami.security.policy import Role
from openami.services.bootstrap import build_platform, ensure_admin_token, stop_platform
from openami.services.context import Platform
from openami.settings import IdentitySettings, Settings

PROBLEM = "application/problem+json"
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _token_for(engine: Engine, username: str, role: Role) -> str:
    with engine.begin() as conn:
        account_id = ident.create_account(
            conn, NewAccount(username, [RoleGrant(role)]), settings=IdentitySettings(), now=T0
        )
        principal = ident.load_principal(conn, account_id)
        assert principal is not None
        return ident.issue_token(conn, principal, ttl=None, now=datetime.now(UTC), issued_by="test").token


@pytest.fixture
async def api(engine: Engine, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Platform, dict[str, str]]]:
    """A client on a served API, the platform, and tokens by role: admin, auditor, technician."""
    platform = build_platform(Settings(data_dir=tmp_path), engine=engine)
    admin = ensure_admin_token(engine, now=datetime.now(UTC))
    assert admin is not None
    tokens = {
        "admin": admin,
        "auditor": _token_for(engine, "aud", Role.AUDITOR),
        "technician": _token_for(engine, "tech", Role.FIELD_TECHNICIAN),
    }
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(platform), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client, platform, tokens
    finally:
        server.should_exit = True
        await task
        await stop_platform(platform)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        for i in range(6):
            entry = audit.AuditEntry(f"user:u{i % 2}", "readings.read", "ok", resource=f"meter:{i % 3 + 1}")
            audit.record(conn, entry, now=T0 + timedelta(minutes=i))
        for i in range(3):
            events.raise_event(conn, "meter.bad-tag", now=T0 + timedelta(seconds=i), meter_id=7)


async def test_audit_log_is_listed_filtered_paged_and_the_read_is_audited(api) -> None:  # type: ignore[no-untyped-def]
    client, platform, tokens = api
    _seed(platform.engine)
    meter = await client.get("/v1/audit", params={"meter_id": 2}, headers=_auth(tokens["auditor"]))
    assert meter.status_code == 200, meter.text
    assert {e["resource"] for e in meter.json()["items"]} == {"meter:2"}
    assert len(meter.json()["items"]) == 2
    window = await client.get(
        "/v1/audit",
        params={"actor": "user:u1", "since": "2026-11-22T12:02:00Z", "until": "2026-11-22T12:05:00+00:00"},
        headers=_auth(tokens["auditor"]),
    )
    assert [e["resource"] for e in window.json()["items"]] == ["meter:3", "meter:1"]  # minutes 5 and 3
    page = (await client.get("/v1/audit", params={"limit": 2}, headers=_auth(tokens["auditor"]))).json()
    assert len(page["items"]) == 2
    after = await client.get(
        "/v1/audit", params={"limit": 2, "before_seq": page["next_before_seq"]}, headers=_auth(tokens["auditor"])
    )
    assert after.json()["items"][0]["seq"] == page["items"][-1]["seq"] - 1
    reads = await client.get(
        "/v1/audit", params={"action": "audit.read", "actor": "user:aud"}, headers=_auth(tokens["admin"])
    )
    assert len(reads.json()["items"]) == 4
    assert reads.json()["items"][-1]["details"] == {"meter_id": 2, "returned": 2}


@pytest.mark.parametrize(
    "params",
    [
        {"action": "' OR 1=1 --"},
        {"meter_id": "1 OR 1=1"},
        {"meter_id": "99999999999999999999999"},
        {"meter_id": "-1"},
        {"before_seq": str(2**63)},
        {"limit": "0"},
        {"limit": "1000000"},
        {"since": "yesterday"},
        {"since": "2026-11-22T12:00:00"},  # no time zone
        {"since": "2026-11-23T00:00:00Z", "until": "2026-11-22T00:00:00Z"},
        {"actor": "x" * 5000},
        {"actor": "user:a\x00"},
        {"outcome": "maybe"},
        {"subject": ""},
        {"unknown": "1"},
        {"actor[$ne]": "x"},
        {"action": '{"$gt": ""}'},
    ],
)
async def test_bad_audit_filters_are_422_problems(api, params: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    client, _, tokens = api
    response = await client.get("/v1/audit", params=params, headers=_auth(tokens["admin"]))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 422


async def test_repeated_parameters_and_injections_that_fit_the_schema_find_nothing(api) -> None:  # type: ignore[no-untyped-def]
    client, platform, tokens = api
    _seed(platform.engine)
    repeated = await client.get("/v1/audit?actor=user:u1&actor=user:u0", headers=_auth(tokens["admin"]))
    assert repeated.status_code == 422
    for actor in ("' OR 1=1 --", "user:u1' OR '1'='1", "user:u1; DROP TABLE audit_log; --", '"); SELECT 1; --'):
        response = await client.get("/v1/audit", params={"actor": actor}, headers=_auth(tokens["admin"]))
        assert response.status_code == 200
        assert response.json()["items"] == []
    response = await client.get("/v1/security/events", params={"actor": "' OR 1=1 --"}, headers=_auth(tokens["admin"]))
    assert response.json()["items"] == []
    with platform.engine.connect() as conn:
        assert audit.verify(conn, public_key=_any_key()).ok  # nothing was dropped or changed


def _any_key() -> ec.EllipticCurvePublicKey:
    return EcdsaAuditSigner.generate().public_key()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/security/events", {"kind": "Meter; DROP"}),
        ("/v1/security/events", {"meter_id": "abc"}),
        ("/v1/security/events", {"before_id": "0"}),
        ("/v1/security/events", {"bogus": "1"}),
        ("/v1/security/alerts", {"state": "' OR 1=1 --"}),
        ("/v1/security/alerts", {"limit": "-5"}),
        ("/v1/security/alerts", {"page": "2"}),
    ],
)
async def test_bad_event_and_alert_filters_are_422_problems(api, path: str, params: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    client, _, tokens = api
    response = await client.get(path, params=params, headers=_auth(tokens["admin"]))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM


async def test_no_token_is_401_and_a_refused_role_is_403_and_audited(api) -> None:  # type: ignore[no-untyped-def]
    client, platform, tokens = api
    for path in ("/v1/audit", "/v1/security/events", "/v1/security/alerts"):
        anonymous = await client.get(path, params={"unknown": "1"})
        assert anonymous.status_code == 401, path  # authentication before anything about the request
        assert anonymous.headers["content-type"] == PROBLEM
        refused = await client.get(path, headers=_auth(tokens["technician"]))
        assert refused.status_code == 403, path
        assert refused.headers["content-type"] == PROBLEM
    ack = await client.post("/v1/security/alerts/1/acknowledge", headers=_auth(tokens["auditor"]))
    assert ack.status_code == 403
    with platform.engine.connect() as conn:
        denied = audit.query(conn, outcome="denied", actor="user:tech", action="audit.read")
        denied_events = events.list_events(conn, kind="api.denied", actor="user:tech")
        denied_ack = audit.query(conn, outcome="denied", actor="user:aud", action="security.alerts.manage")
    assert len(denied) == 1
    assert len(denied_events) == 3
    assert len(denied_ack) == 1


async def test_events_alerts_and_acknowledging_a_burst(api) -> None:  # type: ignore[no-untyped-def]
    client, platform, tokens = api
    _seed(platform.engine)
    listed = await client.get("/v1/security/events", params={"meter_id": 7}, headers=_auth(tokens["auditor"]))
    assert listed.status_code == 200
    assert [e["kind"] for e in listed.json()["items"]] == ["meter.bad-tag"] * 3
    alerts = (
        await client.get("/v1/security/alerts", params={"state": "open"}, headers=_auth(tokens["auditor"]))
    ).json()
    assert [(a["kind"], a["scope"], a["event_count"]) for a in alerts] == [("meter.bad-tag", "meter:7", 3)]
    alert_id = alerts[0]["id"]
    ack = await client.post(f"/v1/security/alerts/{alert_id}/acknowledge", headers=_auth(tokens["admin"]))
    assert ack.status_code == 200, ack.text
    assert (ack.json()["state"], ack.json()["acknowledged_by"]) == ("acknowledged", "user:admin")
    again = await client.post(f"/v1/security/alerts/{alert_id}/acknowledge", headers=_auth(tokens["admin"]))
    assert (again.status_code, again.headers["content-type"]) == (409, PROBLEM)
    missing = await client.post("/v1/security/alerts/424242/acknowledge", headers=_auth(tokens["admin"]))
    assert missing.status_code == 404
    huge = await client.post(f"/v1/security/alerts/{2**64}/acknowledge", headers=_auth(tokens["admin"]))
    assert huge.status_code == 422
    closed = await client.post(f"/v1/security/alerts/{alert_id}/close", headers=_auth(tokens["admin"]))
    assert closed.json()["state"] == "closed"
    with platform.engine.connect() as conn:
        trail = [e.action for e in audit.query(conn, resource=f"alert:{alert_id}")]
    assert trail == ["security.alert.close", "security.alert.acknowledge", "security.alert.open"]
