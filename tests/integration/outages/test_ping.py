"""``headend.ping`` against a meter that is not there: silence is False, and the counters it reserved
are recorded (a ping never reuses an invocation counter)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db.tables import invocation_counters
from openami.headend.ping import ping
from openami.services.bootstrap import build_platform, stop_platform
from openami.services.meters import import_commissioning, load_targets
from openami.settings import Settings

KEYS = {"guek": "11" * 16, "gak": "22" * 16}


async def test_a_meter_that_does_not_answer_is_dark_and_its_counters_move_on(engine: Engine, tmp_path: Path) -> None:
    platform = build_platform(Settings(data_dir=tmp_path), engine=engine)
    meter: dict[str, Any] = {
        "serial": "PINGTEST01", "kind": "electric", "customer_class": "residential", "host": "127.0.0.1", "port": 1,
        "system_title": "4F414D0000000002", "model": "test", "firmware": "1.0", "service_point_id": None,
        "keys": KEYS,
    }  # fmt: skip
    document = {"format": "openami-commissioning", "version": 1, "meters": [meter]}
    meter_id = import_commissioning(engine, platform.keystore, document, now=datetime.now(UTC))["PINGTEST01"]
    platform.collector.targets = load_targets(engine, platform.keystore)
    try:
        assert await ping(platform.collector, meter_id, timeout_s=0.5) is False
        first = _next_counter(engine, meter_id)
        assert await ping(platform.collector, meter_id, timeout_s=0.5) is False
        assert _next_counter(engine, meter_id) > first  # each ping uses a fresh block, never one used before
        assert await ping(platform.collector, meter_id + 1000, timeout_s=0.5) is False  # not a registered meter
    finally:
        await stop_platform(platform)


def _next_counter(engine: Engine, meter_id: int) -> int:
    query = sa.select(invocation_counters.c.client_ic_next).where(invocation_counters.c.meter_id == meter_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
