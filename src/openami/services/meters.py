"""Meter registry services: commissioning import, listing, and loading read targets with their keys."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from openami.db import meters as meter_repo
from openami.db import revenue as revenue_repo
from openami.db.tables import transformers
from openami.domain.meters import Meter
from openami.errors import InvalidInput
from openami.headend.keys import make_target
from openami.headend.reader import MeterTarget
from openami.security import keys as key_management
from openami.security.keystore import MasterKeyProvider, MeterKeys, store_first_keys, store_meter_keys
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
        _record_check_meters(conn, document, ids, now=now)
        first = store_first_keys(conn, keystore, {ids[serial]: keys[serial] for serial in ids}, now=now)
        for serial, meter_id in ids.items():
            if meter_id in first:
                continue  # new meters: stored in bulk, nothing to supersede
            if store_meter_keys(conn, keystore, meter_id, keys[serial], now=now):  # the file says what the meter holds
                key_management.cancel_open_rotations(conn, meter_id, actor="system:import", now=now)
    return ids


def _record_check_meters(conn: Connection, document: Mapping[str, Any], ids: Mapping[str, int], *, now: Any) -> None:
    """Meters with ``check_for_transformer`` (and no service point) measure that transformer's whole load."""
    pairs: dict[int, str] = {}
    for entry in document.get("meters", []):
        transformer_id = entry.get("check_for_transformer")
        if transformer_id is None:
            continue
        if not isinstance(transformer_id, str) or entry.get("service_point_id") is not None:
            raise InvalidInput(f"meter {entry['serial']}: a check meter names a transformer and no service point")
        pairs[ids[entry["serial"]]] = transformer_id
    unknown = set(pairs.values()) - set(
        conn.execute(sa.select(transformers.c.id).where(transformers.c.id.in_(sorted(set(pairs.values()))))).scalars()
    )
    if unknown:
        raise InvalidInput(f"check meters name unknown transformers: {sorted(unknown)[:5]}")
    revenue_repo.record_check_meters(conn, pairs, now=now)


def load_targets(engine: Engine, keystore: MasterKeyProvider) -> dict[int, MeterTarget]:
    """Every registered meter as a read target, keys unwrapped in memory only (a few queries a page)."""
    targets: dict[int, MeterTarget] = {}
    with engine.connect() as conn:
        after: int | None = None
        while page := meter_repo.list_meters(conn, after_id=after, limit=5000):
            key_sets, unusable = key_management.load_key_sets(conn, keystore, [m.id for m in page])
            for meter_id, exc in unusable.items():  # unreadable without keys: say so, keep the rest
                _log.error("headend.meter.keys_unusable", meter_id=meter_id, error=exc.code)
            for meter in page:
                if meter.id in key_sets:  # with pending keys while a rotation is uncertain
                    targets[meter.id] = make_target(meter, key_sets[meter.id])
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
