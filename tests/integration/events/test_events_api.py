"""Listing events: row-scoped by the policy (a network operator sees their area only), audited, filters
checked, and the same through the HTTP API (problem+json for bad input)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.cli import main
from openami.db import meter_events as repo
from openami.db import tables as t
from openami.db.meter_events import EventRow
from openami.db.meters import upsert_meters, upsert_topology
from openami.domain.meter_events import EventCategory, EventCode
from openami.domain.meters import Feeder, Phase, Premise, ServicePoint, Substation, Transformer
from openami.errors import InvalidInput, NotFound, PermissionDenied
from openami.services import events as event_services
from openami.services.bootstrap import build_platform, ensure_admin_token, stop_platform
from openami.services.context import ALL_SCOPES, Platform, RequestScope, Role
from openami.settings import Settings
from tests.integration.db.helpers import spec

NOW = datetime.now(UTC).replace(microsecond=0)
T = int(NOW.timestamp()) - 3600
OPERATOR = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
DNO = RequestScope("user:dno", frozenset({Role.NETWORK_OPERATOR}), frozenset({ALL_SCOPES}), area="SS01")
CUSTOMER = RequestScope("user:c", frozenset({Role.CUSTOMER}), frozenset({ALL_SCOPES}), premises=frozenset({"P1"}))


def _fleet(engine: Engine) -> tuple[int, int]:
    """Meter a in substation SS01's area, meter b in SS02's; a last gasp and a restoration each, b a tamper."""
    with engine.begin() as conn:
        upsert_topology(
            conn,
            substations=[Substation("SS01", "North"), Substation("SS02", "South")],
            feeders=[Feeder("F1", "SS01"), Feeder("F2", "SS02")],
            transformers=[Transformer("TX1", "F1", Phase.A), Transformer("TX2", "F2", Phase.A)],
            premises=[Premise("P1", "1 North St"), Premise("P2", "2 South St")],
            service_points=[ServicePoint("SP1", "P1", "TX1", Phase.A), ServicePoint("SP2", "P2", "TX2", Phase.A)],
        )
        ids = upsert_meters(
            conn, [spec(1, service_point_id="SP1"), spec(2, service_point_id="SP2")], now=NOW - timedelta(days=30)
        )
        a, b = ids[spec(1).serial], ids[spec(2).serial]
        rows = [
            EventRow(a, int(EventCode.POWER_DOWN), T, T + 1.5, "push"),
            EventRow(a, int(EventCode.POWER_UP), T + 600, T + 601.0, "log"),
            EventRow(b, int(EventCode.POWER_DOWN), T + 10, T + 11.0, "push"),
            EventRow(b, int(EventCode.COVER_OPENED), T + 20, T + 21.0, "push"),
        ]
        repo.store_events(conn, rows, now=NOW.timestamp())
    return a, b


def test_operators_see_every_meter_and_filters_apply(engine: Engine) -> None:
    a, b = _fleet(engine)
    every = event_services.list_events(engine, OPERATOR, now=NOW)
    assert [(e.meter_id, e.code) for e in every] == [
        (a, "power-up"), (b, "cover-opened"), (b, "power-down"), (a, "power-down"),
    ]  # fmt: skip
    assert every[-1].received_at == datetime.fromtimestamp(T + 1.5, UTC)
    assert every[0].source == "log"
    assert every[0].category == "power"
    codes = event_services.parse_codes(["power-down", "2"])
    assert {e.code for e in event_services.list_events(engine, OPERATOR, codes=codes, now=NOW)} == {
        "power-down", "power-up",
    }  # fmt: skip
    tamper = event_services.list_events(engine, OPERATOR, categories=[EventCategory.TAMPER], now=NOW)
    assert [e.meter_id for e in tamper] == [b]
    window = event_services.list_events(
        engine, OPERATOR, since=datetime.fromtimestamp(T + 5, UTC), until=datetime.fromtimestamp(T + 15, UTC), now=NOW
    )
    assert [(e.meter_id, e.code) for e in window] == [(b, "power-down")]
    mine = event_services.list_events(engine, OPERATOR, meter_id=a, limit=1, now=NOW)
    assert [e.code for e in mine] == ["power-up"]


def test_a_network_operator_sees_only_their_area(engine: Engine) -> None:
    a, b = _fleet(engine)
    assert {e.meter_id for e in event_services.list_events(engine, DNO, now=NOW)} == {a}
    with pytest.raises(NotFound):  # outside the area: as if it did not exist
        event_services.list_events(engine, DNO, meter_id=b, now=NOW)
    with pytest.raises(PermissionDenied):
        event_services.list_events(engine, CUSTOMER, now=NOW)


def test_reads_are_audited(engine: Engine) -> None:
    a, _ = _fleet(engine)
    event_services.list_events(engine, OPERATOR, meter_id=a, now=NOW)
    log = t.audit_log.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(log.actor, log.outcome, log.resource, log.subject).where(log.action == "events.read")
        ).all()
    assert [tuple(r) for r in rows] == [("user:ops", "ok", f"meter:{a}", "premise:P1")]


def test_bad_filters_are_invalid_input(engine: Engine) -> None:
    _fleet(engine)
    with pytest.raises(InvalidInput, match="unknown event code"):
        event_services.parse_codes(["lightning"])
    with pytest.raises(InvalidInput, match="unknown event category"):
        event_services.parse_categories(["weather"])
    with pytest.raises(InvalidInput, match="time zone"):
        event_services.list_events(engine, OPERATOR, since=datetime(2026, 1, 1), now=NOW)
    with pytest.raises(InvalidInput, match="before"):
        event_services.list_events(engine, OPERATOR, since=NOW, until=NOW - timedelta(hours=1), now=NOW)
    with pytest.raises(InvalidInput, match="limit"):
        event_services.list_events(engine, OPERATOR, limit=0, now=NOW)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def api(engine: Engine, tmp_path: Path) -> AsyncIterator[tuple[str, Platform, str]]:
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


async def test_events_over_http(api: tuple[str, Platform, str]) -> None:
    base, platform, token = api
    a, b = _fleet(platform.engine)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        every = await client.get("/v1/events", params={"code": ["power-down"]})
        assert every.status_code == 200
        assert [(e["meter_id"], e["code"], e["source"]) for e in every.json()] == [
            (b, "power-down", "push"), (a, "power-down", "push"),
        ]  # fmt: skip
        one = await client.get(f"/v1/meters/{b}/events", params={"category": "tamper"})
        assert [e["code_number"] for e in one.json()] == [40]
        assert one.json()[0]["meter_time"].startswith(datetime.fromtimestamp(T + 20, UTC).isoformat()[:19])
        bad = await client.get("/v1/events", params={"code": "lightning"})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        assert "lightning" in bad.json()["detail"]
        missing = await client.get("/v1/meters/999999/events")
        assert missing.status_code == 404
        assert (await client.get("/v1/events", headers={"Authorization": "Bearer nope"})).status_code == 401
        spec_doc = (await client.get("/openapi.json")).json()
        assert "/v1/events" in spec_doc["paths"]
        assert "/v1/meters/{meter_id}/events" in spec_doc["paths"]


def test_cli_lists_events_as_a_table_and_json(engine: Engine, db_url: str, tmp_path: Path) -> None:
    a, _ = _fleet(engine)
    env = {"OPENAMI_DATABASE_URL": db_url, "OPENAMI_DATA_DIR": str(tmp_path / "data")}
    since = datetime.fromtimestamp(T - 60, UTC).isoformat()
    result = CliRunner().invoke(main, ["events", "list", "--since", since, "--category", "tamper"], env=env)
    assert result.exit_code == 0, result.output
    assert "cover-opened" in result.stdout
    assert "power-down" not in result.stdout
    result = CliRunner().invoke(main, ["events", "list", "--meter", str(a), "--since", since, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert [(e["code"], e["source"]) for e in json.loads(result.stdout)] == [
        ("power-up", "log"),
        ("power-down", "push"),
    ]
    bad = CliRunner().invoke(main, ["events", "list", "--code", "lightning"], env=env)
    assert bad.exit_code == 1
    assert "unknown event code 'lightning'" in bad.stderr
