"""Builders for the prepayment tests: a small grid with premises, a platform, tariffs and accounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from openami.domain.messages import CollectedReadings, ReadingsStored
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import prepay
from openami.services.bootstrap import build_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.settings import PrepaySettings, Settings

BILLING = RequestScope("user:billing", frozenset({Role.BILLING_CIS}), frozenset({ALL_SCOPES}))
T0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)  # a Monday, 09:00 UTC: outside the default friendly hours
INTERVAL = 900


def customer(*premises: str) -> RequestScope:
    return RequestScope("user:cust", frozenset({Role.CUSTOMER}), frozenset({ALL_SCOPES}), premises=frozenset(premises))


def grid(count: int, *, first: int = 1, critical: tuple[int, ...] = ()) -> dict[str, Any]:
    """``count`` electric meters PM0001.. at premises P0001.. on one transformer of substation SS01."""
    doc: dict[str, Any] = {
        "format": "openami-commissioning", "version": 1,
        "substations": [{"id": "SS01", "name": "SS01"}], "feeders": [{"id": "SS01-F1", "substation_id": "SS01"}],
        "transformers": [{"id": "T1", "feeder_id": "SS01-F1", "phase": "A"}],
        "premises": [], "service_points": [], "meters": [],
    }  # fmt: skip
    for n in range(first, first + count):
        premise, point = f"P{n:04d}", f"SP{n:04d}"
        doc["premises"].append({"id": premise, "address": f"{n} Prepay Lane", "critical_care": n in critical})
        doc["service_points"].append({"id": point, "premise_id": premise, "transformer_id": "T1", "phase": "A"})
        doc["meters"].append({
            "serial": f"PM{n:06d}", "kind": "electric", "customer_class": "residential", "host": "127.0.0.1",
            "port": 1, "system_title": f"50524550{n:08X}", "model": "test", "firmware": "1.0",
            "service_point_id": point, "keys": {"guek": "11" * 16, "gak": "22" * 16},
        })  # fmt: skip
    return doc


def make_platform(
    engine: Engine, tmp_path: Path, *, clock: list[datetime] | None = None, **prepay_settings: Any
) -> Platform:
    """A platform (not started) whose clock is ``clock[0]`` (a list the test may move on)."""
    moment = clock if clock is not None else [T0]
    settings = Settings(data_dir=tmp_path, prepay=PrepaySettings(**prepay_settings))
    return build_platform(settings, engine=engine, now=lambda: moment[0])


def add_meters(platform: Platform, count: int, *, first: int = 1, critical: tuple[int, ...] = ()) -> list[int]:
    ids = import_commissioning(platform.engine, platform.keystore, grid(count, first=first, critical=critical), now=T0)
    return [ids[f"PM{n:06d}"] for n in range(first, first + count)]


def tariff(
    platform: Platform, code: str = "STD", *, price: str = "0.25", standing: str = "0.50", currency: str = "EUR"
) -> prepay.TariffView:
    return prepay.define_tariff(
        platform, BILLING, code=code, name=f"{code} tariff", currency=currency, price_per_kwh=price,
        standing_charge_per_day=standing, now=T0,
    )  # fmt: skip


def store(platform: Platform, meter_id: int, start: datetime, values_wh: list[float]) -> list[ReadingsStored]:
    """Store import values for consecutive intervals ending after ``start`` (as the MDM would)."""
    first = int(start.timestamp()) // INTERVAL * INTERVAL + INTERVAL
    ends = tuple(first + i * INTERVAL for i in range(len(values_wh)))
    read_at = datetime.fromtimestamp(ends[-1], UTC) + timedelta(minutes=5)
    result = platform.ingestor.ingest([
        CollectedReadings(
            meter_id=meter_id, read_at=read_at, meter_clock=read_at, requested_from=ends[0], requested_to=ends[-1],
            interval_ends=ends, import_wh=tuple(values_wh), export_wh=tuple(0.0 for _ in ends),
            status=tuple(0 for _ in ends),
        )
    ])  # fmt: skip
    return list(result.stored)
