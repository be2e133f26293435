"""The guard, the calendar and the workflows through the REST API (both databases): approvals with the
two-person rule, the ignore-disconnects mode, calendar entries, problem+json errors."""

from __future__ import annotations

import httpx

from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import switch, switch_guard
from openami.services.context import Platform
from openami.services.switch import CommandRequest
from openami.settings import GuardSettings
from tests.integration.api.test_api import PROBLEM, api  # noqa: F401 - the fixture
from tests.integration.guard.helpers import build_grid, operator


def _hold(platform: Platform, scope: RequestScope, meter_ids: list[int]) -> int:
    requests = [CommandRequest(meter_id=m, command="disconnect", reason="api test") for m in meter_ids]
    views = switch.submit_batch(platform, scope, requests)
    assert {v.status for v in views} == {"awaiting-approval"}
    assert views[0].batch_id is not None
    return views[0].batch_id


async def test_approvals_two_person_rule_and_ignore_mode_over_http(api: tuple[str, Platform, str]) -> None:  # noqa: F811
    base, platform, token = api
    grid = build_grid(platform.engine)
    switch_guard.configure(GuardSettings(approval_batch_size=2))
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        me = (await client.get("/v1/auth/me")).json()["principal"]
        mine = RequestScope(me, frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
        theirs = _hold(platform, operator("alice"), grid.s1[1:4])
        own = _hold(platform, mine, grid.s2[0:3])

        pending = (await client.get("/v1/guard/batches")).json()
        assert sorted(b["id"] for b in pending) == sorted([theirs, own])
        approved = await client.post(f"/v1/guard/batches/{theirs}/approve")
        assert approved.status_code == 200
        assert (approved.json()["state"], approved.json()["decided_by"]) == ("approved", me)

        refused = await client.post(f"/v1/guard/batches/{own}/approve")
        assert refused.status_code == 403
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["type"].endswith("/two-person-rule")
        again = await client.post(f"/v1/guard/batches/{theirs}/approve")
        assert again.status_code == 409
        assert (await client.post("/v1/guard/batches/999/reject", json={"reason": "x"})).status_code == 404

        sent = await client.post("/v1/guard/areas/S2/ignore-disconnects", json={"reason": "storm"})
        assert sent.status_code == 202
        assert sent.json() == {"area": "S2", "ignore_disconnects": True, "meters": 6}
        areas = (await client.get("/v1/guard/areas")).json()
        assert [(a["area"], a["ignore_disconnects"]) for a in areas] == [("S2", True)]
        assert (await client.post("/v1/guard/areas/S9/ignore-disconnects", json={"reason": "x"})).status_code == 404
        cleared = await client.post("/v1/guard/areas/S2/clear")
        assert cleared.json() == {"area": "S2", "ignore_disconnects": False, "meters": 6}
        assert (await client.get("/v1/guard/alarms")).json() == []


async def test_calendar_entries_and_workflow_errors_over_http(api: tuple[str, Platform, str]) -> None:  # noqa: F811
    base, platform, token = api
    build_grid(platform.engine)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        added = await client.post("/v1/calendar", json={"kind": "hours", "start": "16:00", "end": "08:00",
                                                         "reason": "evening peak"})  # fmt: skip
        assert added.status_code == 201
        assert added.json()["rule"] == "no-disconnect hours 16:00-08:00"
        holiday = await client.post("/v1/calendar", json={"kind": "holiday", "day": "2026-12-25", "reason": "Xmas"})
        assert [e["kind"] for e in (await client.get("/v1/calendar")).json()] == ["hours", "holiday"]
        bad = await client.post("/v1/calendar", json={"kind": "hours", "start": "16:00", "reason": "half"})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == PROBLEM
        assert (await client.delete(f"/v1/calendar/{holiday.json()['id']}")).status_code == 204
        assert (await client.delete(f"/v1/calendar/{holiday.json()['id']}")).status_code == 404

        assert (await client.get("/v1/workflows")).json() == []
        assert (await client.get("/v1/workflows/77")).status_code == 404
        no_target = await client.post("/v1/workflows/shed", json={"mode": "disconnect", "reason": "x"})
        assert no_target.status_code == 422
        # the admin (security admin + operator) is no billing clerk: no non-payment disconnects
        assert (await client.post("/v1/workflows/non-payment", json={"meter_id": 2})).status_code == 403
