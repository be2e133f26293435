"""Identity and policy through the REST API (real uvicorn on loopback), on SQLite and PostgreSQL.

Grid used below: substation SS01 has transformer T1 (6 electric meters, premises P01-P06) and T2
(2 electric meters and 1 gas meter, P07-P09); substation SS02 has T3 (5 electric meters, P10-P14).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.domain.messages import CollectedReadings
from openami.security import audit, events
from openami.services import identity as identity_services
from openami.services.bootstrap import build_platform, ensure_admin_token, stop_platform
from openami.services.context import ALL_SCOPES, Platform, RequestScope, Role
from openami.services.identity import NewAccount, RoleGrant
from openami.services.meters import import_commissioning
from openami.settings import IdentitySettings, Settings

PROBLEM = "application/problem+json"
PASSWORD = "correct horse battery"
FAST = IdentitySettings(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1, lockout_threshold=3)
ADMIN = RequestScope("cli:test", frozenset({Role.SECURITY_ADMIN}), frozenset({ALL_SCOPES}))
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
ENDS = tuple(int((HOUR - timedelta(minutes=15 * i)).timestamp()) for i in range(4, 0, -1))
WINDOW = {"from": (HOUR - timedelta(days=1)).isoformat(), "to": HOUR.isoformat()}


@dataclass
class Api:
    base: str
    platform: Platform
    admin_token: str
    meters: dict[str, int]  # premise id -> meter id

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(base_url=self.base, headers=headers)

    def audit(self, **filters: Any) -> list[audit.AuditRecord]:
        with self.platform.engine.connect() as conn:
            return audit.query(conn, limit=10_000, **filters)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _grid() -> dict[str, Any]:
    layout = [("SS01", "T1", 6), ("SS01", "T2", 3), ("SS02", "T3", 5)]
    doc: dict[str, Any] = {
        "format": "openami-commissioning", "version": 1, "substations": [], "feeders": [], "transformers": [],
        "premises": [], "service_points": [], "meters": [],
    }  # fmt: skip
    n = 0
    for substation, transformer, count in layout:
        if not any(s["id"] == substation for s in doc["substations"]):
            doc["substations"].append({"id": substation, "name": substation})
            doc["feeders"].append({"id": f"{substation}-F1", "substation_id": substation})
        doc["transformers"].append({"id": transformer, "feeder_id": f"{substation}-F1", "phase": "A"})
        for _ in range(count):
            n += 1
            premise, point = f"P{n:02d}", f"SP{n:02d}"
            doc["premises"].append({"id": premise, "address": f"{n} Grid Lane"})
            doc["service_points"].append(
                {"id": point, "premise_id": premise, "transformer_id": transformer, "phase": "A"}
            )
            doc["meters"].append({
                "serial": f"AUTH{n:04d}", "kind": "gas" if n == 9 else "electric", "customer_class": "residential",
                "host": "127.0.0.1", "port": 1, "system_title": f"4F414D00000000{n:02X}", "model": "test",
                "firmware": "1.0", "service_point_id": point, "keys": {"guek": "11" * 16, "gak": "22" * 16},
            })  # fmt: skip
    return doc


def _store(platform: Platform, meter_id: int, base: float) -> None:
    platform.ingestor.ingest([
        CollectedReadings(
            meter_id=meter_id, read_at=HOUR, meter_clock=HOUR, requested_from=ENDS[0], requested_to=ENDS[-1],
            interval_ends=ENDS, import_wh=tuple(base for _ in ENDS), export_wh=tuple(0.0 for _ in ENDS),
            status=tuple(0 for _ in ENDS),
        )
    ])  # fmt: skip


@pytest.fixture
async def api(engine: Engine, tmp_path: Path) -> AsyncIterator[Api]:
    platform = build_platform(Settings(data_dir=tmp_path, identity=FAST), engine=engine)
    token = ensure_admin_token(engine, now=datetime.now(UTC))
    assert token is not None
    ids = import_commissioning(engine, platform.keystore, _grid(), now=datetime.now(UTC))
    meters = {f"P{int(serial[4:]):02d}": meter_id for serial, meter_id in ids.items()}
    for premise, meter_id in meters.items():
        _store(platform, meter_id, float(int(premise[1:])))
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
        yield Api(f"http://127.0.0.1:{port}", platform, token, meters)
    finally:
        server.should_exit = True
        await task
        await stop_platform(platform)


def _account(api: Api, username: str, *grants: RoleGrant, premises: tuple[str, ...] = ()) -> None:
    spec = NewAccount(username, grants, password=PASSWORD, premises=premises)
    identity_services.create_account(api.platform.engine, ADMIN, spec, settings=FAST)


async def _login(api: Api, username: str, **extra: Any) -> str:
    async with api.client() as client:
        response = await client.post("/v1/auth/token", json={"username": username, "password": PASSWORD, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    return str(body["access_token"])


def _is_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == status


# -- login and tokens ------------------------------------------------------------------------------


async def test_login_issues_an_expiring_token_that_carries_the_users_roles(api: Api) -> None:
    _account(api, "alice", RoleGrant(Role.AMI_OPERATOR), RoleGrant(Role.AUDITOR))
    async with api.client() as client:
        response = await client.post("/v1/auth/token", json={"username": "alice", "password": PASSWORD})
    body = response.json()
    assert 0 < body["expires_in"] <= FAST.token_ttl_minutes * 60
    async with api.client(body["access_token"]) as client:
        me = (await client.get("/v1/auth/me")).json()
        assert (await client.get("/v1/meters")).json()["total"] == 14
    assert me == {
        "principal": "user:alice", "roles": ["ami_operator", "auditor"], "scopes": ["*"], "area": None, "premises": [],
    }  # fmt: skip
    assert [e.outcome for e in api.audit(actor="user:alice", action="auth.login")] == ["ok"]
    uses = api.audit(actor="user:alice", action="auth.token-use")
    assert len(uses) == 2
    assert uses[0].resource == f"token:{body['token_id']}"


async def test_login_can_narrow_the_token_and_refuses_unknown_scopes(api: Api) -> None:
    _account(api, "alice", RoleGrant(Role.AMI_OPERATOR))
    async with api.client(await _login(api, "alice", scopes=["meter.list"], ttl_minutes=5)) as client:
        assert (await client.get("/v1/meters")).status_code == 200
        _is_problem(await client.get("/v1/collection/runs"), 403)
    async with api.client() as client:
        body = {"username": "alice", "password": PASSWORD, "scopes": ["meters:read"]}
        _is_problem(await client.post("/v1/auth/token", json=body), 422)
    assert len(api.audit(actor="user:alice", action="auth.login")) == 1  # the refused request checked no password


async def test_unknown_user_and_wrong_password_get_the_same_401(api: Api) -> None:
    _account(api, "alice", RoleGrant(Role.AMI_OPERATOR))
    async with api.client() as client:
        unknown = await client.post("/v1/auth/token", json={"username": "mallory", "password": PASSWORD})
        wrong = await client.post("/v1/auth/token", json={"username": "alice", "password": "not the password"})
    for response in (unknown, wrong):
        _is_problem(response, 401)
    assert unknown.json() == wrong.json()
    assert unknown.headers["www-authenticate"] == "Bearer"
    with api.platform.engine.connect() as conn:
        assert len(events.list_events(conn, kind="api.login-failed")) == 2


async def test_lockout_through_the_api_then_unlock_with_an_injected_clock(api: Api) -> None:
    _account(api, "alice", RoleGrant(Role.AMI_OPERATOR))
    start = datetime.now(UTC)
    api.platform.now = lambda: start
    async with api.client() as client:
        for _ in range(FAST.lockout_threshold):
            _is_problem(await client.post("/v1/auth/token", json={"username": "alice", "password": "wrong!"}), 401)
        locked = await client.post("/v1/auth/token", json={"username": "alice", "password": PASSWORD})
        _is_problem(locked, 401)
        assert locked.json()["detail"] == "invalid username or password"
        api.platform.now = lambda: start + timedelta(minutes=FAST.lockout_minutes, seconds=1)
        assert (
            await client.post("/v1/auth/token", json={"username": "alice", "password": PASSWORD})
        ).status_code == 200
    with api.platform.engine.connect() as conn:
        assert len(events.list_events(conn, kind="api.lockout")) == 1


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer  oam_x",
        "Bearer x y",
        "Basic YWxpY2U6cHc=",
        "Bearer oam_unknown",
        "Bearer " + "a" * 10_240,
    ],
    ids=["missing", "no-token", "double-space", "two-words", "basic", "unknown", "10kB"],
)
async def test_missing_and_malformed_tokens_are_401_problems_and_audited(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with api.client() as client:
        response = await client.get("/v1/meters", headers=headers)
    _is_problem(response, 401)
    assert "a" * 100 not in response.text
    (entry,) = api.audit(action="auth.token-use", outcome="failed")
    assert entry.actor == "anonymous"
    assert entry.details["path"] == "/v1/meters"
    assert entry.details["reason"] in {"token-missing", "token-malformed", "token-invalid"}


async def test_two_authorization_headers_are_refused(api: Api) -> None:
    async with api.client() as client:
        headers = [("Authorization", f"Bearer {api.admin_token}"), ("Authorization", "Bearer oam_other")]
        _is_problem(await client.get("/v1/meters", headers=headers), 401)


async def test_expired_revoked_and_narrowed_tokens(api: Api) -> None:
    engine, now = api.platform.engine, datetime.now(UTC)
    issue = identity_services.issue_token
    expired = issue(engine, ADMIN, "admin", ttl=timedelta(hours=1), now=now - timedelta(hours=2)).token
    revoked = issue(engine, ADMIN, "admin", ttl=None, now=now)
    narrow = issue(engine, ADMIN, "admin", ttl=None, scopes=["meter.read"], now=now).token
    identity_services.revoke_token(engine, ADMIN, revoked.id)
    for token in (expired, revoked.token):
        async with api.client(token) as client:
            _is_problem(await client.get("/v1/meters"), 401)
    async with api.client(narrow) as client:
        assert (await client.get(f"/v1/meters/{api.meters['P01']}")).status_code == 200
        refused = await client.get("/v1/meters")
    _is_problem(refused, 403)
    assert "meter.list" in refused.json()["detail"]
    (denial,) = api.audit(actor="user:admin", action="meter.list", outcome="denied")
    assert "scope" in denial.details["reason"]


# -- administration --------------------------------------------------------------------------------


async def test_accounts_and_tokens_are_managed_by_security_admins_only(api: Api) -> None:
    async with api.client(api.admin_token) as admin:
        created = await admin.post(
            "/v1/accounts",
            json={"username": "dno1", "password": PASSWORD, "roles": [{"role": "network_operator", "area": "SS01"}]},
        )
        assert created.status_code == 201, created.text
        assert "password" not in created.text.replace("has_password", "")
        bad = await admin.post("/v1/accounts", json={"username": "x", "roles": [{"role": "network_operator"}]})
        _is_problem(bad, 422)
        dno_token = await _login(api, "dno1")
        assert [a["username"] for a in (await admin.get("/v1/accounts")).json()] == ["admin", "dno1"]
        tokens = (await admin.get("/v1/tokens")).json()
        assert {t["owner"] for t in tokens} == {"user:admin", "user:dno1"}
        assert all("oam_" not in str(t) for t in tokens)
        async with api.client(dno_token) as dno:
            _is_problem(await dno.get("/v1/accounts"), 403)
            _is_problem(await dno.get("/v1/tokens"), 403)
            roles = {"roles": [{"role": "auditor"}]}
            assert (await admin.put("/v1/accounts/dno1/roles", json=roles)).json()["roles"] == [
                {"role": "auditor", "area": None}
            ]
            assert (await dno.get("/v1/auth/me")).json()["roles"] == ["auditor"]
            assert (await admin.post("/v1/accounts/dno1/disable")).json()["enabled"] is False
            _is_problem(await dno.get("/v1/auth/me"), 401)
    assert len(api.audit(actor="user:dno1", action="accounts.manage", outcome="denied")) == 1
    assert len(api.audit(actor="user:admin", action="accounts.manage", outcome="ok")) == 3


# -- scoping inside queries ------------------------------------------------------------------------


async def test_customer_sees_only_their_premises_and_foreign_meters_are_404(api: Api) -> None:
    _account(api, "carol", RoleGrant(Role.CUSTOMER), premises=("P03", "P04"))
    own, foreign = api.meters["P03"], api.meters["P10"]
    async with api.client(await _login(api, "carol")) as client:
        listing = (await client.get("/v1/meters")).json()
        assert sorted(m["id"] for m in listing["items"]) == sorted([own, api.meters["P04"]])
        assert listing["total"] == 2
        assert (await client.get(f"/v1/meters/{own}")).status_code == 200
        readings = (await client.get(f"/v1/meters/{own}/readings", params=WINDOW)).json()
        assert [i["value"] for i in readings["intervals"] if i["channel"] == "1.0.1.8.0.255"] == [3.0] * 4
        for path in (f"/v1/meters/{foreign}", f"/v1/meters/{foreign}/readings", "/v1/meters/999999"):
            response = await client.get(path, params=WINDOW)
            _is_problem(response, 404)
            assert "premise" not in response.text
        _is_problem(await client.post(f"/v1/meters/{own}/read"), 403)
        _is_problem(await client.get("/v1/transformers/T1/load", params=WINDOW), 403)
        _is_problem(await client.get("/v1/collection/runs"), 403)
    (read,) = api.audit(actor="user:carol", action="readings.read", outcome="ok")
    assert (read.resource, read.subject) == (f"meter:{own}", "premise:P03")


async def test_network_operator_gets_aggregates_of_their_area_only(api: Api) -> None:
    _account(api, "dno", RoleGrant(Role.NETWORK_OPERATOR, "SS01"))
    async with api.client(await _login(api, "dno")) as client:
        load = await client.get("/v1/transformers/T1/load", params=WINDOW)
        assert load.status_code == 200, load.text
        body = load.json()
        assert (body["meters"], body["min_group"]) == (6, 5)
        assert [(i["import_wh"], i["meters"]) for i in body["intervals"]] == [(1.0 + 2 + 3 + 4 + 5 + 6, 6)] * 4
        small = await client.get("/v1/transformers/T2/load", params=WINDOW)
        _is_problem(small, 403)
        assert "under the minimum of 5" in small.json()["detail"]
        _is_problem(await client.get("/v1/transformers/T3/load", params=WINDOW), 403)  # another area
        _is_problem(await client.get("/v1/transformers/T9/load", params=WINDOW), 404)
        in_area, elsewhere = api.meters["P01"], api.meters["P10"]
        _is_problem(await client.get(f"/v1/meters/{in_area}/readings", params=WINDOW), 403)  # individual data
        safety = {**WINDOW, "purpose": "safety"}
        assert (await client.get(f"/v1/meters/{in_area}/readings", params=safety)).status_code == 200
        _is_problem(await client.get(f"/v1/meters/{elsewhere}/readings", params=safety), 404)
        assert (await client.get("/v1/meters")).json()["total"] == 9
    denials = api.audit(actor="user:dno", outcome="denied", action="readings.read-aggregate")
    assert len(denials) == 2


async def test_gas_network_operator_sees_gas_meters_only(api: Api) -> None:
    _account(api, "gdn", RoleGrant(Role.GAS_NETWORK_OPERATOR, "SS01"))
    async with api.client(await _login(api, "gdn")) as client:
        listing = (await client.get("/v1/meters")).json()
        assert [m["id"] for m in listing["items"]] == [api.meters["P09"]]
        _is_problem(await client.get(f"/v1/meters/{api.meters['P08']}"), 404)
        _is_problem(await client.get("/v1/transformers/T1/load", params=WINDOW), 403)  # no gas meter there


async def test_third_party_is_refused_everything_until_consent_exists(api: Api) -> None:
    _account(api, "acme", RoleGrant(Role.THIRD_PARTY))
    meter = api.meters["P01"]
    async with api.client(await _login(api, "acme")) as client:
        assert (await client.get("/v1/auth/me")).json()["roles"] == ["third_party"]
        for method, path in (
            ("GET", "/v1/meters"), ("GET", f"/v1/meters/{meter}"), ("GET", f"/v1/meters/{meter}/readings"),
            ("POST", f"/v1/meters/{meter}/read"), ("GET", "/v1/transformers/T1/load"), ("GET", "/v1/collection/runs"),
            ("GET", "/v1/communication-errors"), ("GET", "/v1/accounts"), ("GET", "/v1/tokens"),
        ):  # fmt: skip
            _is_problem(await client.request(method, path, params=WINDOW), 403)
    assert len(api.audit(actor="user:acme", outcome="denied")) == 2 * 9  # the denial and its security event
