"""The prepayment API over a real loopback socket (both databases): tariffs, enrolment, idempotent payments,
refusals as problem+json with nothing written, the paginated ledger, alerts, reconciliation, customers' scope."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.security.identity import NewAccount, RoleGrant
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import identity as identity_services
from openami.services import prepay
from openami.services.bootstrap import stop_platform
from openami.services.context import Platform
from openami.services.identity import issue_token
from openami.services.prepay_engine import debit_readings

from .helpers import BILLING, T0, add_meters, make_platform, store, tariff

PROBLEM = "application/problem+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(engine: Engine, tmp_path: Path) -> AsyncIterator[tuple[str, Platform]]:
    platform = make_platform(engine, tmp_path)
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
        yield f"http://127.0.0.1:{port}", platform
    finally:
        server.should_exit = True
        await task
        await stop_platform(platform)


ADMIN = RequestScope("cli:test", frozenset({Role.SECURITY_ADMIN}), frozenset({ALL_SCOPES}))


def _token(platform: Platform, username: str, role: Role, premises: tuple[str, ...] = ()) -> str:
    spec = NewAccount(username, (RoleGrant(role),), premises=premises)
    identity_services.create_account(platform.engine, ADMIN, spec, settings=platform.settings.identity)
    return issue_token(platform.engine, ADMIN, username, ttl=None).token


async def test_payments_are_idempotent_refusals_write_nothing_and_the_ledger_pages(
    served: tuple[str, Platform],
) -> None:
    base, platform = served
    (meter,) = add_meters(platform, 1)
    billing = {"Authorization": f"Bearer {_token(platform, 'billing', Role.BILLING_CIS)}"}
    async with httpx.AsyncClient(base_url=base, headers=billing) as client:
        tariff = await client.post("/v1/prepay/tariffs", json={
            "code": "STD", "name": "standard", "currency": "EUR", "price_per_kwh": "0.25",
            "standing_charge_per_day": "0.40"})  # fmt: skip
        assert tariff.status_code == 201, tariff.text
        assert tariff.json()["price_per_kwh"] == "0.25"
        enrolled = await client.post("/v1/prepay/accounts", json={"meter_id": meter, "tariff_code": "STD"})
        assert enrolled.status_code == 201, enrolled.text
        account = enrolled.json()
        assert (account["balance"], account["currency"], account["state"]) == ("0.00", "EUR", "connected")
        path = f"/v1/prepay/accounts/{account['id']}"
        body = {"amount": "20.00", "currency": "EUR", "reference": "shop 17"}
        first = await client.post(f"{path}/payments", json=body, headers={"Idempotency-Key": "k-1"})
        again = await client.post(f"{path}/payments", json=body, headers={"Idempotency-Key": "k-1"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["duplicate"] is True
        assert again.json()["account"]["balance"] == "20.00"
        for bad in ({"amount": "5.00", "currency": "GBP"}, {"amount": "-5.00", "currency": "EUR"},
                    {"amount": "0", "currency": "EUR"}, {"amount": "5.001", "currency": "EUR"}):  # fmt: skip
            refused = await client.post(f"{path}/payments", json=bad)
            assert refused.status_code == 422, bad
            assert refused.headers["content-type"] == PROBLEM
        reused = await client.post(
            f"{path}/payments", json={**body, "amount": "21.00"}, headers={"Idempotency-Key": "k-1"}
        )
        assert reused.status_code == 409
        for n in range(3):
            await client.post(f"{path}/adjustments", json={"amount": f"-{n + 1}.00", "currency": "EUR", "reason": "r"})
        page = (await client.get(f"{path}/ledger", params={"limit": 2})).json()
        assert [e["seq"] for e in page["entries"]] == [4, 3]
        older = (await client.get(f"{path}/ledger", params={"limit": 2, "before_seq": page["next_before_seq"]})).json()
        assert [e["seq"] for e in older["entries"]] == [2, 1]
        assert [e["kind"] for e in older["entries"]] == ["adjustment", "payment"]
        assert (await client.get(path)).json()["balance"] == "14.00"
        for code, currency, price in (("GBP1", "GBP", "0.2"), ("NIGHT", "EUR", "0.125")):
            tariff = {"code": code, "name": code, "currency": currency, "price_per_kwh": price,
                      "standing_charge_per_day": "0"}  # fmt: skip
            assert (await client.post("/v1/prepay/tariffs", json=tariff)).status_code == 201
        assert [t["code"] for t in (await client.get("/v1/prepay/tariffs")).json()] == ["GBP1", "NIGHT", "STD"]
        assert (await client.patch(path, json={"tariff_code": "GBP1"})).status_code == 422
        patched = await client.patch(path, json={"tariff_code": "NIGHT", "low_credit_threshold": "15",
                                                 "friendly_hours": "sat-sun"})  # fmt: skip
        assert patched.status_code == 200, patched.text
        changed = patched.json()
        assert (changed["tariff_code"], changed["low_credit_threshold"], changed["friendly_hours"]) == (
            "NIGHT", "15.00", "sat-sun",
        )  # fmt: skip
        assert changed["credit_state"] == "low"  # 14.00 is now under the threshold
        alerts = (await client.get("/v1/prepay/alerts", params={"open": "true"})).json()
        assert [a["kind"] for a in alerts] == ["low-credit"]


async def test_alerts_reconciliation_and_a_customer_sees_only_own_premises(served: tuple[str, Platform]) -> None:
    base, platform = served
    mine, theirs = add_meters(platform, 2)
    tariff(platform, price="1.00")
    own = prepay.enrol(platform, BILLING, meter_id=mine, tariff_code="STD", low_credit_threshold="3.00", now=T0)
    other = prepay.enrol(platform, BILLING, meter_id=theirs, tariff_code="STD", now=T0)
    prepay.record_payment(platform, BILLING, own.id, amount="5.00", currency="EUR", reference="r", now=T0)
    for msg in store(platform, mine, T0, [1000.0, 1000.0, 1000.0]):
        with platform.engine.begin() as conn:
            debit_readings(conn, msg, now=T0 + timedelta(hours=1))
    customer = {"Authorization": f"Bearer {_token(platform, 'cust', Role.CUSTOMER, ('P0001',))}"}
    async with httpx.AsyncClient(base_url=base, headers=customer) as client:
        accounts = (await client.get("/v1/prepay/accounts")).json()
        assert [a["id"] for a in accounts] == [own.id]
        assert accounts[0]["balance"] == "2.00"
        assert (await client.get(f"/v1/prepay/accounts/{other.id}")).status_code == 404
        alerts = (await client.get("/v1/prepay/alerts", params={"open": "true"})).json()
        assert [(a["kind"], a["balance"], a["account_id"]) for a in alerts] == [("low-credit", "2.00", own.id)]
        paid = await client.post(f"/v1/prepay/accounts/{own.id}/payments", json={"amount": "1.00", "currency": "EUR"})
        assert paid.status_code == 403
        window = {"from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}
        rows = (await client.get("/v1/prepay/reconciliation", params=window)).json()
        assert [(r["account_id"], r["status"]) for r in rows] == [(own.id, "no-registers")]
