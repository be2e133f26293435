"""A small grid with check meters, stored readings and switch commands for the revenue-protection tests."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import tables as t
from openami.db.readings import write_intervals
from openami.db.registers import write_registers
from openami.domain.codes import ChannelCode, SourceCode
from openami.security.keystore import master_key_provider
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services.bootstrap import build_platform
from openami.services.context import Platform
from openami.services.meters import import_commissioning
from openami.settings import RevenueSettings, Settings

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
END = int(NOW.timestamp())  # a multiple of 900: the last complete interval ends here
DAY = 86_400
Q = 900
OPERATOR = RequestScope("user:ops", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
INVESTIGATOR = RequestScope("user:inv", frozenset({Role.BILLING_CIS}), frozenset({ALL_SCOPES}))
AUDITOR = RequestScope("user:aud", frozenset({Role.AUDITOR}), frozenset({ALL_SCOPES}))
TECHNICIAN = RequestScope("user:tech", frozenset({Role.FIELD_TECHNICIAN}), frozenset({ALL_SCOPES}))


def transformer(n: int) -> str:
    return f"SS01-F01-T{n:03d}"


def document(transformers: int = 2, meters_per: int = 3, *, check_meters: bool = True) -> dict[str, Any]:
    """Meter i of transformer x is serial OAM{x}{i:03}; premises P{x}{i}; check meters CHK{x}."""
    points = [(x, i) for x in range(1, transformers + 1) for i in range(meters_per)]
    meters = [_meter(f"OAM{x}{i:04d}", f"SP{x}{i:04d}") for x, i in points]
    if check_meters:
        meters += [
            {**_meter(f"CHK{x:04d}", None), "check_for_transformer": transformer(x)} for x in range(1, transformers + 1)
        ]
    return {
        "format": "openami-commissioning", "version": 1, "generated_at": NOW.isoformat(), "seed": 1,
        "substations": [{"id": "SS01", "name": "North"}],
        "feeders": [{"id": "SS01-F01", "substation_id": "SS01"}],
        "transformers": [
            {"id": transformer(x), "feeder_id": "SS01-F01", "phase": "A"} for x in range(1, transformers + 1)
        ],
        "premises": [{"id": f"P{x}{i:04d}", "address": f"{i} Main St", "critical_care": False} for x, i in points],
        "service_points": [
            {"id": f"SP{x}{i:04d}", "premise_id": f"P{x}{i:04d}", "transformer_id": transformer(x), "phase": "A"}
            for x, i in points
        ],
        "meters": meters,
    }  # fmt: skip


def _meter(serial: str, service_point: str | None) -> dict[str, Any]:
    return {
        "serial": serial, "kind": "electric", "customer_class": "residential", "host": "127.0.1.1", "port": 4059,
        "system_title": secrets.token_hex(8), "model": "openami-sim-e1", "firmware": "1.0.0",
        "service_point_id": service_point,
        "keys": {"guek": secrets.token_hex(16), "gak": secrets.token_hex(16)},
    }  # fmt: skip


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


def platform_on(
    engine: Engine, tmp_path: Path, clock: Callable[[], datetime] | None = None, **revenue: Any
) -> Platform:
    settings = Settings(data_dir=tmp_path, revenue=RevenueSettings(**revenue))
    return build_platform(settings, engine=engine, now=clock or Clock())


def load_grid(platform: Platform, doc: dict[str, Any] | None = None) -> dict[str, int]:
    keystore = master_key_provider(platform.settings)
    return import_commissioning(platform.engine, keystore, doc or document(), now=NOW)


def fill(
    engine: Engine, meter_id: int, start: int, end: int, wh: float, channel: ChannelCode = ChannelCode.ACTIVE_IMPORT
) -> None:
    """Store ``wh`` for every quarter-hour ending in ``(start, end]``."""
    rows = [(meter_id, int(channel), e, wh, 0, int(SourceCode.METER), e) for e in range(start + Q, end + 1, Q)]
    with engine.begin() as conn:
        write_intervals(conn, rows)


def register(engine: Engine, meter_id: int, at: int, value: float, unit: str = "Wh") -> None:
    """An active-import register snapshot of ``value`` in ``unit`` captured at ``at``."""
    with engine.begin() as conn:
        write_registers(conn, [(meter_id, "1.0.1.8.0.255", at, value, unit, at)])


def switch_command(
    engine: Engine, meter_id: int, command: str, at: datetime, *, final_import_wh: float | None = None
) -> None:
    """A confirmed switch command as the switch service stores it (columns it requires get placeholders)."""
    table = t.metadata.tables["switch_commands"]
    values: dict[str, Any] = {}
    for column in table.columns:
        if column.primary_key or column.nullable or column.server_default is not None:
            continue
        values[column.name] = _placeholder(column)
    counter = secrets.randbelow(2**40)
    values.update({"meter_id": meter_id, "command": command, "status": "confirmed", "confirmed_at": at,
                   "final_import_wh": final_import_wh})  # fmt: skip
    if "counter" in table.c:
        values["counter"] = counter
    with engine.begin() as conn:
        conn.execute(sa.insert(table).values(**values))


def _placeholder(column: sa.Column[Any]) -> Any:
    kind = column.type
    if isinstance(kind, t.UtcDateTime):
        return NOW - timedelta(days=30)
    if isinstance(kind, sa.LargeBinary):
        return b"\x00"
    if isinstance(kind, sa.Boolean):
        return False
    if isinstance(kind, (sa.Integer, sa.Float)):
        return 0
    return "x"
