"""Meter registry services: commissioning import, listing, and loading read targets with their keys."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from openami.db import meters as meter_repo
from openami.domain.meters import Meter
from openami.errors import InvalidInput, NotFound
from openami.headend.keys import make_target
from openami.headend.reader import MeterTarget
from openami.security import keys as key_management
from openami.security.keystore import KeyIntegrityError, MasterKeyProvider, MeterKeys, store_meter_keys
from openami.security.policy import authorize, visible_meters
from openami.services.context import RequestScope

_log = structlog.get_logger("openami.services")


def import_commissioning(
    engine: Engine, keystore: MasterKeyProvider, document: Mapping[str, Any], *, now: Any
) -> dict[str, int]:
    """Load a commissioning document: topology, meters and their keys (wrapped), in one transaction."""
    try:
        key_hex = {m["serial"]: m["keys"] for m in document.get("meters", [])}
        keys = {serial: MeterKeys.from_hex(k["guek"], k["gak"], k.get("kek")) for serial, k in key_hex.items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(
            f"malformed commissioning document: missing or bad meter keys ({type(exc).__name__})"
        ) from None
    with engine.begin() as conn:
        ids = meter_repo.import_commissioning(conn, document, now=now)
        for serial, meter_id in ids.items():
            if store_meter_keys(conn, keystore, meter_id, keys[serial], now=now):  # the file says what the meter holds
                key_management.cancel_open_rotations(conn, meter_id, actor="system:import", now=now)
    return ids


def load_targets(engine: Engine, keystore: MasterKeyProvider) -> dict[int, MeterTarget]:
    """Every registered meter as a read target, keys unwrapped in memory only."""
    targets: dict[int, MeterTarget] = {}
    with engine.connect() as conn:
        after: int | None = None
        while page := meter_repo.list_meters(conn, after_id=after, limit=1000):
            for meter in page:
                try:
                    key_set = key_management.load_key_set(conn, keystore, meter.id)
                except (NotFound, KeyIntegrityError) as exc:  # unreadable without keys: say so, keep the rest
                    _log.error("headend.meter.keys_unusable", meter_id=meter.id, error=exc.code)
                    continue
                targets[meter.id] = make_target(meter, key_set)  # with pending keys while a rotation is uncertain
            after = page[-1].id
    return targets


def list_meters(
    engine: Engine, scope: RequestScope, *, after_id: int | None, limit: int, now: datetime | None = None
) -> list[Meter]:
    """The meters ``scope`` may see (its area or premises are applied in the query), by id."""
    with engine.connect() as conn:
        authorize(conn, scope, "meter.list", now=now or datetime.now(UTC))
        visible = visible_meters(scope, "meter.list")
        return meter_repo.list_meters(conn, after_id=after_id, limit=limit, visible=visible)


def count_meters(engine: Engine, scope: RequestScope, *, now: datetime | None = None) -> int:
    with engine.connect() as conn:
        authorize(conn, scope, "meter.list", now=now or datetime.now(UTC))
        return meter_repo.count_meters(conn, visible=visible_meters(scope, "meter.list"))


def get_meter(engine: Engine, scope: RequestScope, meter_id: int, *, now: datetime | None = None) -> Meter:
    """One meter; NotFound also for a meter outside the scope (its existence is not revealed)."""
    with engine.connect() as conn:
        authorize(conn, scope, "meter.read", now=now or datetime.now(UTC))
        return meter_repo.get_meter(conn, meter_id, visible=visible_meters(scope, "meter.read"))
