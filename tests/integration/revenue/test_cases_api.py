"""The revenue-protection API over a real loopback socket (SQLite and PostgreSQL): cases, the watch list,
the energy balance, scans and premise flags; problem+json for refused and invalid requests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.security import identity as ident
from openami.security.identity import NewAccount, RoleGrant
from openami.security.policy import Role
from openami.services.bootstrap import stop_platform
from openami.services.context import Platform
from openami.settings import IdentitySettings
from tests.integration.revenue.helpers import END, NOW, Clock, fill, load_grid, platform_on, transformer

PROBLEM = "application/problem+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _token(engine: Engine, username: str, role: Role) -> str:
    with engine.begin() as conn:
        account_id = ident.create_account(
            conn, NewAccount(username, [RoleGrant(role)]), settings=IdentitySettings(), now=NOW
        )
        principal = ident.load_principal(conn, account_id)
        assert principal is not None
        return ident.issue_token(conn, principal, ttl=None, now=datetime.now(UTC), issued_by="test").token


@pytest.fixture
async def api(engine: Engine, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Platform, dict[str, str]]]:
    platform = platform_on(engine, tmp_path, Clock())
    headers = {
        role: {"Authorization": f"Bearer {_token(engine, role, Role(role))}"}
        for role in ("ami_operator", "field_technician", "auditor")
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
            yield client, platform, headers
    finally:
        server.should_exit = True
        await task
        await stop_platform(platform)


async def test_cases_watch_list_and_balance_through_the_api(api) -> None:  # type: ignore[no-untyped-def]
    client, platform, headers = api
    ops, tech = headers["ami_operator"], headers["field_technician"]
    ids = load_grid(platform)
    for i in range(3):
        fill(platform.engine, ids[f"OAM2{i:04d}"], END - 8 * 86_400, END, 100.0)
    fill(platform.engine, ids["OAM20000"], END - 86_400, END, 10.0)
    fill(platform.engine, ids["CHK0002"], END - 8 * 86_400, END, 300.0)

    balance = await client.get(f"/v1/transformers/{transformer(2)}/energy-balance", headers=tech)
    assert balance.status_code == 200, balance.text
    assert balance.json()["flagged"] is True
    assert [s["meter_id"] for s in balance.json()["suspects"]] == [ids["OAM20000"]]
    empty = (await client.get(f"/v1/transformers/{transformer(1)}/energy-balance", headers=tech)).json()
    assert (empty["intervals"], empty["flagged"]) == (0, False)  # nothing stored yet: nothing to flag
    assert (await client.get("/v1/transformers/SS09-F01-T999/energy-balance", headers=tech)).status_code == 404

    scanned = await client.post("/v1/cases/scan", headers=ops, json={})
    assert scanned.status_code == 200, scanned.text
    assert scanned.json()["flagged_transformers"] == [transformer(2)]
    watch = (await client.get("/v1/watch", params={"rule": "energy-balance"}, headers=tech)).json()
    assert [w["meter_id"] for w in watch] == [ids["OAM20000"]]
    stored = (await client.get("/v1/energy-balances", params={"transformer_id": transformer(2)}, headers=tech)).json()
    assert stored[0]["flagged"] is True

    cases = (await client.get("/v1/cases", params={"state": "open"}, headers=tech)).json()
    assert [c["transformer_id"] for c in cases] == [transformer(2)]
    case_id = cases[0]["id"]
    moved = await client.post(f"/v1/cases/{case_id}/transition", headers=ops, json={"to_state": "investigating"})
    assert moved.json()["state"] == "investigating"
    illegal = await client.post(f"/v1/cases/{case_id}/transition", headers=ops, json={"to_state": "closed"})
    assert illegal.status_code == 409
    assert illegal.headers["content-type"].startswith(PROBLEM)
    assert illegal.json()["type"].endswith("/illegal-case-transition")
    noted = await client.post(f"/v1/cases/{case_id}/notes", headers=ops, json={"text": "site visit on Monday"})
    assert [h["kind"] for h in noted.json()["history"]][-1] == "note"
    assigned = await client.post(f"/v1/cases/{case_id}/assign", headers=ops, json={"assignee": "jones"})
    assert assigned.json()["assignee"] == "jones"
    detail = (await client.get(f"/v1/cases/{case_id}", headers=tech)).json()
    assert [h["kind"] for h in detail["history"]] == ["opened", "evidence", "state", "note", "assigned"]

    refused = await client.post(f"/v1/cases/{case_id}/notes", headers=tech, json={"text": "x"})
    assert refused.status_code == 403
    assert (await client.get("/v1/cases", headers=headers["auditor"])).status_code == 403
    bad = await client.post(f"/v1/cases/{case_id}/transition", headers=ops, json={"to_state": "solved"})
    assert bad.status_code == 422
    assert (await client.get("/v1/cases/424242", headers=tech)).status_code == 404


async def test_premise_flags_and_move_check_through_the_api(api) -> None:  # type: ignore[no-untyped-def]
    client, platform, headers = api
    ops = headers["ami_operator"]
    ids = load_grid(platform)
    flagged = await client.put("/v1/premises/P10000/flags", headers=ops, json={"vacant": True})
    assert flagged.status_code == 200, flagged.text
    assert flagged.json()["vacant"] is True
    assert (await client.put("/v1/premises/P99999/flags", headers=ops, json={"vacant": True})).status_code == 404
    naive = await client.post(
        f"/v1/meters/{ids['OAM10000']}/move-check",
        headers=ops,
        json={"move_out": "2026-11-20T12:00:00", "move_in": "2026-11-21T12:00:00"},
    )
    assert naive.status_code == 422
    none_near = await client.post(
        f"/v1/meters/{ids['OAM10000']}/move-check",
        headers=ops,
        json={"move_out": "2026-11-20T12:00:00Z", "move_in": "2026-11-21T12:00:00Z"},
    )
    assert none_near.status_code == 422
    assert "no import register" in none_near.json()["detail"]
