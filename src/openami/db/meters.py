"""Meters and the grid topology they hang on: add and import (idempotent upserts), get, list.

``import_commissioning`` loads the simulator's commissioning file (docs/internal/contracts.md) minus
the keys: those go through ``openami.security.keystore.store_meter_keys`` in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from openami.db import tables as t
from openami.db._upsert import insert_on_conflict
from openami.domain.meters import CustomerClass, Feeder, Meter, MeterKind, Phase, Premise, ServicePoint, Substation
from openami.domain.meters import Transformer as GridTransformer
from openami.errors import InvalidInput, NotFound

__all__ = [
    "MeterSpec",
    "count_meters",
    "get_meter",
    "get_meter_by_serial",
    "import_commissioning",
    "list_meters",
    "meter_ids_by_serial",
    "on_transformer",
    "premise_of",
    "transformer_area",
    "upsert_meters",
    "upsert_topology",
]

_CHUNK = 500


class MeterSpec(NamedTuple):
    """A meter to add or update, identified by its serial number."""

    serial: str
    kind: MeterKind
    customer_class: CustomerClass
    host: str
    port: int
    system_title: bytes
    model: str
    firmware: str
    service_point_id: str | None = None


def upsert_meters(conn: Connection, specs: Sequence[MeterSpec], *, now: datetime) -> dict[str, int]:
    """Add meters, or update the ones whose serial is known (commissioned_at is kept); returns serial → id."""
    for spec in specs:
        if len(spec.system_title) != 8:
            raise InvalidInput(f"meter {spec.serial}: a system title is 8 bytes, not {len(spec.system_title)}")
    rows = [{**spec._asdict(), "kind": str(spec.kind), "customer_class": str(spec.customer_class)} for spec in specs]
    for row in rows:
        row["commissioned_at"] = now
    update = [c for c in MeterSpec._fields if c != "serial"]
    for i in range(0, len(rows), _CHUNK):
        insert_on_conflict(conn, t.meters, rows[i : i + _CHUNK], key=("serial",), update=update)
    return meter_ids_by_serial(conn, [spec.serial for spec in specs])


def meter_ids_by_serial(conn: Connection, serials: Sequence[str]) -> dict[str, int]:
    """serial → id for the serials that exist."""
    found: dict[str, int] = {}
    for i in range(0, len(serials), _CHUNK):
        query = sa.select(t.meters.c.serial, t.meters.c.id).where(t.meters.c.serial.in_(serials[i : i + _CHUNK]))
        found.update({str(serial): int(meter_id) for serial, meter_id in conn.execute(query)})
    return found


def upsert_topology(
    conn: Connection,
    *,
    substations: Sequence[Substation] = (),
    feeders: Sequence[Feeder] = (),
    transformers: Sequence[GridTransformer] = (),
    premises: Sequence[Premise] = (),
    service_points: Sequence[ServicePoint] = (),
) -> None:
    """Add or update topology, parents first: substation → feeder → transformer → service point ← premise."""
    batches: list[tuple[sa.Table, list[dict[str, Any]]]] = [
        (t.substations, [{"id": s.id, "name": s.name} for s in substations]),
        (t.feeders, [{"id": f.id, "substation_id": f.substation_id} for f in feeders]),
        (t.transformers, [{"id": x.id, "feeder_id": x.feeder_id, "phase": str(x.phase)} for x in transformers]),
        (t.premises, [{"id": p.id, "address": p.address, "critical_care": p.critical_care} for p in premises]),
        (
            t.service_points,
            [
                {"id": sp.id, "premise_id": sp.premise_id, "transformer_id": sp.transformer_id, "phase": str(sp.phase)}
                for sp in service_points
            ],
        ),
    ]
    for table, rows in batches:
        update = [c.name for c in table.columns if c.name != "id"]
        for i in range(0, len(rows), _CHUNK):
            insert_on_conflict(conn, table, rows[i : i + _CHUNK], key=("id",), update=update)


def import_commissioning(conn: Connection, document: Mapping[str, Any], *, now: datetime) -> dict[str, int]:
    """Load topology and meters of an ``openami-commissioning`` document; returns serial → meter id.

    Idempotent: importing the same file twice changes nothing. Raises InvalidInput on a malformed
    document (nothing should then be committed).
    """
    if document.get("format") != "openami-commissioning" or document.get("version") != 1:
        raise InvalidInput("not an openami-commissioning document of version 1")
    try:
        upsert_topology(
            conn,
            substations=[Substation(d["id"], d["name"]) for d in document.get("substations", [])],
            feeders=[Feeder(d["id"], d["substation_id"]) for d in document.get("feeders", [])],
            transformers=[
                GridTransformer(d["id"], d["feeder_id"], Phase(d["phase"])) for d in document.get("transformers", [])
            ],
            premises=[
                Premise(d["id"], d["address"], bool(d.get("critical_care", False)))
                for d in document.get("premises", [])
            ],
            service_points=[
                ServicePoint(d["id"], d["premise_id"], d["transformer_id"], Phase(d["phase"]))
                for d in document.get("service_points", [])
            ],
        )
        specs = [_spec(d) for d in document.get("meters", [])]
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"malformed commissioning document: {type(error).__name__}: {error}") from None
    return upsert_meters(conn, specs, now=now)


def _spec(d: Mapping[str, Any]) -> MeterSpec:
    return MeterSpec(
        serial=str(d["serial"]),
        kind=MeterKind(d["kind"]),
        customer_class=CustomerClass(d["customer_class"]),
        host=str(d["host"]),
        port=int(d["port"]),
        system_title=bytes.fromhex(d["system_title"]),
        model=str(d["model"]),
        firmware=str(d["firmware"]),
        service_point_id=d.get("service_point_id"),
    )


_METER_COLUMNS = (
    t.meters.c.id, t.meters.c.serial, t.meters.c.kind, t.meters.c.host, t.meters.c.port, t.meters.c.system_title,
    t.meters.c.model, t.meters.c.firmware, t.meters.c.customer_class, t.meters.c.service_point_id,
)  # fmt: skip


def _meter(row: Any) -> Meter:
    return Meter(
        id=int(row.id),
        serial=row.serial,
        kind=MeterKind(row.kind),
        host=row.host,
        port=int(row.port),
        system_title=bytes(row.system_title),
        model=row.model,
        firmware=row.firmware,
        customer_class=CustomerClass(row.customer_class),
        service_point_id=row.service_point_id,
    )


def get_meter(conn: Connection, meter_id: int, *, visible: ColumnElement[bool] | None = None) -> Meter:
    """One meter; NotFound when it does not exist or ``visible`` (a policy clause on meters) excludes it."""
    query = sa.select(*_METER_COLUMNS).where(t.meters.c.id == meter_id)
    row = conn.execute(query if visible is None else query.where(visible)).one_or_none()
    if row is None:
        raise NotFound(f"meter {meter_id} does not exist")
    return _meter(row)


def get_meter_by_serial(conn: Connection, serial: str) -> Meter:
    row = conn.execute(sa.select(*_METER_COLUMNS).where(t.meters.c.serial == serial)).one_or_none()
    if row is None:
        raise NotFound(f"meter {serial!r} does not exist")
    return _meter(row)


def list_meters(
    conn: Connection,
    *,
    after_id: int | None = None,
    limit: int = 100,
    customer_class: CustomerClass | None = None,
    visible: ColumnElement[bool] | None = None,
) -> list[Meter]:
    """Meters by id; page with ``after_id`` = the last id of the previous page (keyset paging).

    ``visible`` is a policy clause on meters (``security.policy.visible_meters``), applied in the query.
    """
    query = sa.select(*_METER_COLUMNS) if visible is None else sa.select(*_METER_COLUMNS).where(visible)
    if after_id is not None:
        query = query.where(t.meters.c.id > after_id)
    if customer_class is not None:
        query = query.where(t.meters.c.customer_class == str(customer_class))
    return [_meter(row) for row in conn.execute(query.order_by(t.meters.c.id).limit(limit))]


def count_meters(
    conn: Connection, *, customer_class: CustomerClass | None = None, visible: ColumnElement[bool] | None = None
) -> int:
    query = sa.select(sa.func.count()).select_from(t.meters)
    if visible is not None:
        query = query.where(visible)
    if customer_class is not None:
        query = query.where(t.meters.c.customer_class == str(customer_class))
    return int(conn.execute(query).scalar_one())


def on_transformer(transformer_id: str) -> ColumnElement[bool]:
    """A clause on meters: the meters whose service point hangs on ``transformer_id``."""
    points = sa.select(t.service_points.c.id).where(t.service_points.c.transformer_id == transformer_id)
    return t.meters.c.service_point_id.in_(points)


def transformer_area(conn: Connection, transformer_id: str) -> str:
    """The substation (distribution area) a transformer is in; NotFound for an unknown transformer."""
    query = (
        sa.select(t.feeders.c.substation_id)
        .join(t.transformers, t.transformers.c.feeder_id == t.feeders.c.id)
        .where(t.transformers.c.id == transformer_id)
    )
    area = conn.execute(query).scalar_one_or_none()
    if area is None:
        raise NotFound(f"transformer {transformer_id[:32]!r} does not exist")
    return str(area)


def premise_of(conn: Connection, meter_id: int) -> str | None:
    """The premise a meter serves (whose personal data its readings are), or None."""
    query = (
        sa.select(t.service_points.c.premise_id)
        .join(t.meters, t.meters.c.service_point_id == t.service_points.c.id)
        .where(t.meters.c.id == meter_id)
    )
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else str(found)
