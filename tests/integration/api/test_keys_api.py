"""Key rotation through the REST API (both databases): 202 and a report, policy-checked, never a key."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx

from openami.services.context import Platform
from openami.services.identity import issue_token
from openami.services.meters import import_commissioning, load_targets

from .test_api import PROBLEM, TOKEN_ADMIN, api  # noqa: F401 - the fixture

KEYS = {"guek": "11" * 16, "gak": "22" * 16, "kek": "33" * 16}


def _add_unreachable_meter(platform: Platform) -> int:
    """A meter on loopback port 1 (nothing listens there), with a master key."""
    meter: dict[str, Any] = {
        "serial": "KEYTEST0001", "kind": "electric", "customer_class": "residential", "host": "127.0.0.1", "port": 1,
        "system_title": "4F414D0000000001", "model": "test", "firmware": "1.0", "service_point_id": None,
        "keys": KEYS,
    }  # fmt: skip
    document = {"format": "openami-commissioning", "version": 1, "meters": [meter]}
    meter_id = import_commissioning(platform.engine, platform.keystore, document, now=datetime.now(UTC))["KEYTEST0001"]
    platform.collector.targets = load_targets(platform.engine, platform.keystore)
    return meter_id


async def _until_attempted(client: httpx.AsyncClient, rotation_id: int) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        body: dict[str, Any] = (await client.get(f"/v1/keys/rotations/{rotation_id}")).json()
        if all(m["attempts"] for m in body["meters"]):
            return body
        assert asyncio.get_running_loop().time() < deadline, "the rotation was never attempted"
        await asyncio.sleep(0.05)


async def test_rotate_one_meter_answers_202_and_reports_an_unreachable_meter_pending(
    api: tuple[str, Platform, str],  # noqa: F811
) -> None:
    base, platform, token = api
    meter_id = _add_unreachable_meter(platform)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        started = await client.post(f"/v1/meters/{meter_id}/keys/rotate", json={"emergency": True})
        assert started.status_code == 202
        body = started.json()
        assert body["target"] == f"meter:{meter_id}"
        assert body["emergency"] is True
        assert body["counts"]["pending"] == 1
        report = await _until_attempted(client, body["id"])
        assert report["counts"] == {"rotated": 0, "pending": 1, "uncertain": 0, "failed": 0, "cancelled": 0}
        assert report["finished"] is False
        (meter,) = report["meters"]
        assert meter["serial"] == "KEYTEST0001"
        assert "associating with the current keys" in meter["last_error"]
        summary = await client.get(f"/v1/keys/rotations/{body['id']}", params={"meters": "false"})
        assert summary.json()["meters"] == []
        group = await client.post("/v1/keys/rotations", json={"meter_ids": [meter_id]})
        assert group.status_code == 202
        assert group.json()["target"] == f"meter:{meter_id}"
        everything = str((await client.get(f"/v1/keys/rotations/{group.json()['id']}")).json())
    for key in KEYS.values():
        assert key not in everything


async def test_key_rotation_is_refused_without_keys_rotate_and_bad_requests_are_problems(
    api: tuple[str, Platform, str],  # noqa: F811
) -> None:
    base, platform, token = api
    meter_id = _add_unreachable_meter(platform)
    narrow = issue_token(platform.engine, TOKEN_ADMIN, "admin", ttl=None, scopes=["meter.list"]).token
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.post(f"/v1/meters/{meter_id}/keys/rotate")).status_code == 401
        denied = await client.post(f"/v1/meters/{meter_id}/keys/rotate", headers={"Authorization": f"Bearer {narrow}"})
        assert denied.status_code == 403
        assert denied.headers["content-type"] == PROBLEM
        assert "keys.rotate" in denied.json()["detail"]
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.post("/v1/meters/999999/keys/rotate", headers=headers)).status_code == 404
        assert (await client.get("/v1/keys/rotations/424242", headers=headers)).status_code == 404
        for body in ({}, {"all": True, "feeder_id": "F1"}, {"meter_ids": []}, {"feeder_id": "x;drop"}, {"x": 1}):
            bad = await client.post("/v1/keys/rotations", json=body, headers=headers)
            assert bad.status_code == 422, body
            assert bad.headers["content-type"] == PROBLEM
        unknown_feeder = await client.post("/v1/keys/rotations", json={"feeder_id": "NOPE"}, headers=headers)
        assert unknown_feeder.status_code == 404
