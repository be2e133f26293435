"""The REST API over a real loopback socket (uvicorn), on SQLite and PostgreSQL.

Every error is RFC 9457 problem+json; every route but /health needs a bearer token.
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
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.domain.messages import CollectedReadings
from openami.services.bootstrap import build_platform, ensure_admin_token, stop_platform
from openami.services.context import ALL_SCOPES, Platform, RequestScope, Role
from openami.services.identity import issue_token
from openami.services.meters import import_commissioning
from openami.settings import Settings

PROBLEM = "application/problem+json"
TOKEN_ADMIN = RequestScope("cli:test", frozenset({Role.SECURITY_ADMIN}), frozenset({ALL_SCOPES}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def api(engine: Engine, tmp_path: Path) -> AsyncIterator[tuple[str, Platform, str]]:
    """(base URL, platform, admin token) of an API served by uvicorn on a free loopback port."""
    platform = build_platform(Settings(data_dir=tmp_path), engine=engine)
    token = ensure_admin_token(engine, now=datetime.now(UTC))
    assert token is not None
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
        yield f"http://127.0.0.1:{port}", platform, token
    finally:
        server.should_exit = True
        await task
        await stop_platform(platform)


def _store_one_day(platform: Platform, meter_id: int) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    ends = tuple(int((now - timedelta(minutes=15 * i)).timestamp()) for i in range(96, 0, -1))
    platform.ingestor.ingest(
        [
            CollectedReadings(
                meter_id=meter_id,
                read_at=now,
                meter_clock=now,
                requested_from=ends[0],
                requested_to=ends[-1],
                interval_ends=ends,
                import_wh=tuple(100.0 + i for i in range(96)),
                export_wh=tuple(0.0 for _ in range(96)),
                status=tuple(0 for _ in range(96)),
            )
        ]
    )


def _add_meter(platform: Platform) -> int:
    document = {
        "format": "openami-commissioning",
        "version": 1,
        "meters": [
            {
                "serial": "APITEST0001",
                "kind": "electric",
                "customer_class": "residential",
                "host": "127.0.0.1",
                "port": 1,
                "system_title": "4F414D0000000001",
                "model": "test",
                "firmware": "1.0",
                "service_point_id": None,
                "keys": {"guek": "11" * 16, "gak": "22" * 16},
            }
        ],
    }
    ids = import_commissioning(platform.engine, platform.keystore, document, now=datetime.now(UTC))
    return ids["APITEST0001"]


async def test_health_is_public_and_everything_else_needs_a_token(api: tuple[str, Platform, str]) -> None:
    base, _, _ = api
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/health")).json()["status"] == "ok"
        for path in ("/v1/meters", "/v1/collection/runs", "/v1/communication-errors"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["status"] == 401
        bad = await client.get("/v1/meters", headers={"Authorization": "Bearer oam_not-a-real-token"})
        assert bad.status_code == 401
        assert bad.headers["content-type"] == PROBLEM


async def test_expired_token_and_missing_scope_are_refused(api: tuple[str, Platform, str]) -> None:
    base, platform, _ = api
    now = datetime.now(UTC)
    # tokens of the first-run admin (security_admin + ami_operator): one narrowed by its scopes, one expired
    narrow = issue_token(platform.engine, TOKEN_ADMIN, "admin", ttl=None, scopes=["collection.read"], now=now).token
    expired = issue_token(
        platform.engine, TOKEN_ADMIN, "admin", ttl=timedelta(days=1), now=now - timedelta(days=2)
    ).token
    async with httpx.AsyncClient(base_url=base) as client:
        forbidden = await client.get("/v1/meters", headers={"Authorization": f"Bearer {narrow}"})
        assert forbidden.status_code == 403
        assert forbidden.headers["content-type"] == PROBLEM
        assert "meter.list" in forbidden.json()["detail"]
        assert (
            await client.get("/v1/collection/runs", headers={"Authorization": f"Bearer {narrow}"})
        ).status_code == 200
        assert (await client.get("/v1/meters", headers={"Authorization": f"Bearer {expired}"})).status_code == 401


async def test_meter_readings_as_json_and_csv_with_quality_flags(api: tuple[str, Platform, str]) -> None:
    base, platform, token = api
    meter_id = _add_meter(platform)
    _store_one_day(platform, meter_id)
    headers = {"Authorization": f"Bearer {token}"}
    end = datetime.now(UTC)
    params = {"from": (end - timedelta(days=2)).isoformat(), "to": end.isoformat()}
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        listing = (await client.get("/v1/meters")).json()
        assert listing["total"] == 1
        assert listing["items"][0]["serial"] == "APITEST0001"
        assert "keys" not in listing["items"][0]
        assert "11" * 16 not in (await client.get(f"/v1/meters/{meter_id}")).text
        body = (await client.get(f"/v1/meters/{meter_id}/readings", params=params)).json()
        imports = [i for i in body["intervals"] if i["channel"] == "1.0.1.8.0.255"]
        assert len(imports) == 96
        assert imports[0]["value"] == 100.0
        assert imports[0]["quality"] == ["valid"]
        assert imports[0]["source"] == "meter"
        csv = await client.get(f"/v1/meters/{meter_id}/readings", params={**params, "format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv")
        lines = csv.text.strip().splitlines()
        assert lines[0].startswith("channel,interval_end,value")
        assert len(lines) == 1 + 2 * 96


async def test_invalid_requests_get_precise_problems(api: tuple[str, Platform, str]) -> None:
    base, platform, token = api
    meter_id = _add_meter(platform)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        unknown = await client.get("/v1/meters/999999")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == PROBLEM
        missing = await client.get(f"/v1/meters/{meter_id}/readings")
        assert missing.status_code == 422
        assert missing.headers["content-type"] == PROBLEM
        assert any("from" in e["loc"] for e in missing.json()["errors"])
        backwards = await client.get(
            f"/v1/meters/{meter_id}/readings",
            params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        )
        assert backwards.status_code == 422
        assert "before" in backwards.json()["detail"]
        naive = await client.get(
            f"/v1/meters/{meter_id}/readings", params={"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00"}
        )
        assert naive.status_code == 422
        assert (await client.get("/v1/meters", params={"limit": 0})).status_code == 422


async def test_on_demand_read_of_an_unreachable_meter_is_a_problem_and_a_recorded_error(
    api: tuple[str, Platform, str],
) -> None:
    base, platform, token = api
    meter_id = _add_meter(platform)  # port 1 on loopback: nothing listens there
    from openami.services.meters import load_targets  # noqa: PLC0415

    platform.collector.targets = load_targets(platform.engine, platform.keystore)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        response = await client.post(f"/v1/meters/{meter_id}/read")
        assert response.status_code in (502, 504)
        assert response.headers["content-type"] == PROBLEM
        assert "APITEST0001" in response.json()["detail"]
        errors = (await client.get("/v1/communication-errors", params={"meter_id": meter_id})).json()
        assert errors
        assert errors[0]["step"] == "connect"


async def test_openapi_describes_every_route(api: tuple[str, Platform, str]) -> None:
    base, _, _ = api
    async with httpx.AsyncClient(base_url=base) as client:
        spec = (await client.get("/openapi.json")).json()
    paths = set(spec["paths"])
    assert {
        "/health",
        "/v1/meters",
        "/v1/meters/{meter_id}",
        "/v1/meters/{meter_id}/readings",
        "/v1/meters/{meter_id}/read",
        "/v1/collection/runs",
        "/v1/communication-errors",
    } <= paths
