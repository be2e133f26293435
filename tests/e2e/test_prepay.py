"""Prepayment end to end on a simulated fleet over TCP (issue 5), SQLite and PostgreSQL.

The platform runs with its prepayment part: stored readings (through the bus, as the MDM publishes
them) are debited; at zero credit outside friendly-credit hours the supply is disconnected by a signed
command the meter verifies and confirms; a top-up reconnects it, confirmed by the meter too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from openami.bus import READINGS_COLLECTED
from openami.db.tables import prepay_accounts
from openami.domain.messages import CollectedReadings
from openami.security import command_authority as authority_core
from openami.security.keystore import master_key_provider
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import prepay
from openami.services import switch as switch_services
from openami.services.bootstrap import build_platform, start_platform, stop_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.services.pki import ca_files
from openami.settings import CollectionSettings, PrepaySettings, PushSettings, Settings, SwitchSettings
from openami.sim.fleet import FleetConfig
from openami.sim.runner import FleetHandle, start_fleet_processes

BILLING = RequestScope("user:billing", frozenset({Role.BILLING_CIS}), frozenset({ALL_SCOPES}))
WAIT_S = 20.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        collection=CollectionSettings(concurrency=4, retries=0, backoff_s=0.05, timeout_s=1.0, catch_up_days=1),
        switch=SwitchSettings(poll_s=0.05, retry_backoff_s=0.2, max_backoff_s=0.5),
        push=PushSettings(enabled=False),  # its fixed port could collide with another test's platform
        prepay=PrepaySettings(friendly_hours="", reconnect_mode="immediate", check_interval_s=3600),
    )


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory, engine: Engine, settings: Settings) -> Iterator[FleetHandle]:
    """2 reliable meters pinning the command authority created in the test's database."""
    with engine.begin() as conn:
        authority = authority_core.load_or_create(
            conn, master_key_provider(settings), ca_files(settings), now=datetime.now(UTC)
        )
    config = FleetConfig(meters=2, seed=71, flaky_fraction=0.0, drift_fraction=0.0, days=1, port=0,
                         authority_certificate_pem=authority.certificate_pem)  # fmt: skip
    handle = start_fleet_processes(config, processes=1, commissioning_path=tmp_path_factory.mktemp("f") / "c.json")
    try:
        yield handle
    finally:
        handle.stop()


async def _until_state(platform: Platform, account_id: int, state: str) -> prepay.AccountView:
    """Poll with a deadline: the debit and the switch decision happen in the platform's background."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        view = prepay.get_account(platform, BILLING, account_id)
        if view.state == state:
            return view
        assert asyncio.get_running_loop().time() < deadline, f"the account never became {state}: {view}"
        await asyncio.sleep(0.05)


async def test_zero_credit_disconnects_the_meter_and_a_top_up_reconnects_it(
    engine: Engine, settings: Settings, fleet: FleetHandle
) -> None:
    assert fleet.commissioning_path is not None
    document = json.loads(fleet.commissioning_path.read_text(encoding="utf-8"))
    import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    platform = build_platform(settings, engine=engine)
    await start_platform(platform)
    try:
        meter = min(t.meter_id for t in platform.collector.targets.values())
        prepay.define_tariff(platform, BILLING, code="STD", name="standard", currency="EUR", price_per_kwh="1.00",
                             standing_charge_per_day="0")  # fmt: skip
        account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD")
        hour_ago = int((datetime.now(UTC) - timedelta(hours=1)).timestamp()) // 900 * 900
        with engine.begin() as conn:  # enrolled an hour ago, so that the last hour's intervals are debited
            conn.execute(prepay_accounts.update().values(debit_from=hour_ago, debited_through=hour_ago))
        prepay.record_payment(platform, BILLING, account.id, amount="1.50", currency="EUR", reference="shop")
        ends = tuple(hour_ago + 900 * i for i in range(1, 4))
        now = datetime.now(UTC)
        await platform.bus.publish(READINGS_COLLECTED, CollectedReadings(
            meter_id=meter, read_at=now, meter_clock=now, requested_from=ends[0], requested_to=ends[-1],
            interval_ends=ends, import_wh=(1000.0, 1000.0, 500.0), export_wh=(0.0, 0.0, 0.0), status=(0, 0, 0),
        ))  # fmt: skip
        cut = await _until_state(platform, account.id, "disconnected")
        assert (cut.balance, cut.credit_state) == ("-1.00", "zero")
        assert cut.last_command_id is not None
        disconnect = await switch_services.wait_for(platform, cut.last_command_id, WAIT_S)
        assert (disconnect.command, disconnect.workflow, disconnect.status) == ("disconnect", "prepay", "confirmed")
        assert disconnect.output_state is False  # the meter opened its switch

        paid = await asyncio.to_thread(
            prepay.record_payment, platform, BILLING, account.id, amount="5.00", currency="EUR", reference="shop"
        )
        assert (paid.switch, paid.account.state, paid.account.balance) == ("reconnect", "connected", "4.00")
        assert paid.account.last_command_id is not None
        reconnect = await switch_services.wait_for(platform, paid.account.last_command_id, WAIT_S)
        assert (reconnect.command, reconnect.status, reconnect.output_state) == ("reconnect", "confirmed", True)
    finally:
        await stop_platform(platform)
