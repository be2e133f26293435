"""Small builders shared by the storage tests."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from openami.db.meters import MeterSpec, upsert_meters
from openami.domain.meters import CustomerClass, MeterKind

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
T0 = 1_795_000_500  # an interval end (multiple of 900 s)


def spec(n: int, **changes: object) -> MeterSpec:
    base = MeterSpec(
        serial=f"OAM{n:08d}",
        kind=MeterKind.ELECTRIC,
        customer_class=CustomerClass.RESIDENTIAL,
        host=f"127.0.{n // 250}.{n % 250 + 1}",
        port=4059,
        system_title=n.to_bytes(8, "big"),
        model="openami-sim-e1",
        firmware="1.0.0",
    )
    return base._replace(**changes)  # type: ignore[arg-type]


def add_meters(conn: Connection, count: int) -> list[int]:
    ids = upsert_meters(conn, [spec(n) for n in range(1, count + 1)], now=NOW)
    return [ids[spec(n).serial] for n in range(1, count + 1)]
