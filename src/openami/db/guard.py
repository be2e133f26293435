"""Repository of the off-switch guard: admitted disconnects, held batches, openings, alarms, area modes.

Module functions taking a ``Connection``; the caller (``services.switch_guard``) owns the transaction,
the policy check and the audit entry. An *area* is a substation id (``meters`` → service point →
transformer → feeder → substation); a meter outside the topology has the area None.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import tables as t
from openami.db._upsert import insert_on_conflict
from openami.errors import NotFound

__all__ = [
    "Alarm",
    "AreaMode",
    "Batch",
    "alarm_openings",
    "areas_of",
    "attach_openings",
    "clear_alarm",
    "command_explains",
    "count_disconnects",
    "create_alarm",
    "create_batch",
    "decide_batch",
    "get_alarm",
    "get_batch",
    "ignoring_areas",
    "list_alarms",
    "list_area_modes",
    "list_batches",
    "mark_alarm_mode_sent",
    "meters_in_area",
    "open_alarm",
    "record_disconnects",
    "record_opening",
    "set_area_mode",
    "unalarmed_uncommanded",
]

# commands whose counter explains a switch opening the meter reports
OPENING_COMMANDS = ("disconnect", "limit")


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch of commands held by the two-person rule."""

    id: int
    command: str
    meter_ids: tuple[int, ...]
    areas: str
    state: str  # awaiting-approval, approved, rejected
    requested_by: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    note: str | None


@dataclass(frozen=True, slots=True)
class Alarm:
    """Uncommanded switch openings in one area."""

    id: int
    area: str
    state: str  # open, cleared
    opened_at: datetime
    openings: int
    threshold: int
    window_s: int
    ignore_disconnects_sent: bool
    cleared_by: str | None
    cleared_at: datetime | None


@dataclass(frozen=True, slots=True)
class AreaMode:
    area: str
    ignore_disconnects: bool
    changed_by: str
    changed_at: datetime
    reason: str
    alarm_id: int | None


def _area_of_meter() -> sa.Select[int, str | None]:
    m, sp, tr, fd = t.meters, t.service_points, t.transformers, t.feeders
    return (
        sa.select(m.c.id, fd.c.substation_id)
        .select_from(m)
        .outerjoin(sp, sp.c.id == m.c.service_point_id)
        .outerjoin(tr, tr.c.id == sp.c.transformer_id)
        .outerjoin(fd, fd.c.id == tr.c.feeder_id)
    )


# Built once, with bound parameters: every submitted command runs them, and building a statement and
# its cache key costs more CPU than SQLite takes to answer it.
_AREAS_OF = _area_of_meter().where(t.meters.c.id.in_(sa.bindparam("ids", expanding=True)))
_DISCONNECTS_SINCE = sa.select(sa.func.count()).where(t.guard_disconnects.c.admitted_at >= sa.bindparam("since"))
_DISCONNECTS_PER_AREA = (
    sa.select(t.guard_disconnects.c.area, sa.func.count())
    .where(t.guard_disconnects.c.admitted_at >= sa.bindparam("since"),
           t.guard_disconnects.c.area.in_(sa.bindparam("areas", expanding=True)))
    .group_by(t.guard_disconnects.c.area)
)  # fmt: skip
_IGNORING = sa.select(t.guard_area_modes.c.area).where(
    t.guard_area_modes.c.area.in_(sa.bindparam("areas", expanding=True)), t.guard_area_modes.c.ignore_disconnects
)
# One area (a single command's): an IN list is rendered again at every execution, an equality is not.
_DISCONNECTS_IN_AREA = (
    sa.select(t.guard_disconnects.c.area, sa.func.count())
    .where(t.guard_disconnects.c.admitted_at >= sa.bindparam("since"),
           t.guard_disconnects.c.area == sa.bindparam("area"))
    .group_by(t.guard_disconnects.c.area)
)  # fmt: skip
_IGNORING_ONE = sa.select(t.guard_area_modes.c.area).where(
    t.guard_area_modes.c.area == sa.bindparam("area"), t.guard_area_modes.c.ignore_disconnects
)
_ONE_AREA_CHECKS = sa.select(  # what the guard checks for one area, in one round trip
    sa.select(sa.func.count()).where(t.guard_area_modes.c.area == sa.bindparam("area"),
                                     t.guard_area_modes.c.ignore_disconnects).scalar_subquery(),
    sa.select(sa.func.count()).where(t.guard_disconnects.c.admitted_at >= sa.bindparam("since")).scalar_subquery(),
    sa.select(sa.func.count()).where(t.guard_disconnects.c.admitted_at >= sa.bindparam("since"),
                                     t.guard_disconnects.c.area == sa.bindparam("area")).scalar_subquery(),
)  # fmt: skip
_RECORD_DISCONNECT = sa.insert(t.guard_disconnects)


def areas_of(conn: Connection, meter_ids: Iterable[int]) -> dict[int, str | None]:
    """Each known meter's area (substation id, or None outside the topology); unknown ids are left out."""
    ids = sorted(set(meter_ids))
    found: dict[int, str | None] = {}
    for start in range(0, len(ids), 5000):  # bounded IN lists
        rows = conn.execute(_AREAS_OF, {"ids": ids[start : start + 5000]})
        found.update({int(meter_id): area for meter_id, area in rows})
    return found


def meters_in_area(conn: Connection, area: str) -> list[int]:
    """Every meter whose service point lies in ``area``, by id."""
    query = _area_of_meter().where(t.feeders.c.substation_id == area).order_by(t.meters.c.id)
    return [int(meter_id) for meter_id, _ in conn.execute(query)]


# --- rate limits ---------------------------------------------------------------------------------


def area_checks(conn: Connection, since: datetime, area: str | None) -> tuple[bool, int, int]:
    """For one area (None: a meter outside the topology, which no mode or area limit covers): whether it is in
    ignore-disconnects mode, the disconnects admitted at or after ``since`` fleet-wide and in the area."""
    ignoring, fleet, in_area = conn.execute(_ONE_AREA_CHECKS, {"since": since, "area": area}).one()
    return bool(ignoring) and area is not None, int(fleet), int(in_area) if area is not None else 0


def count_disconnects(conn: Connection, since: datetime, areas: Iterable[str] | None = None) -> dict[str | None, int]:
    """Disconnects admitted at or after ``since``: ``{None: fleet total}``, plus one entry per area asked."""
    total = conn.execute(_DISCONNECTS_SINCE, {"since": since}).scalar_one()
    counts: dict[str | None, int] = {None: int(total)}
    wanted = sorted(set(areas or ()))
    if len(wanted) == 1:
        per_area = conn.execute(_DISCONNECTS_IN_AREA, {"since": since, "area": wanted[0]})
        counts.update({area: int(n) for area, n in per_area})
        counts.update({area: 0 for area in wanted if area not in counts})
    elif wanted:
        per_area = conn.execute(_DISCONNECTS_PER_AREA, {"since": since, "areas": wanted})
        counts.update({area: int(n) for area, n in per_area})
        counts.update({area: 0 for area in wanted if area not in counts})
    return counts


def record_disconnects(
    conn: Connection, areas: Mapping[int, str | None], *, actor: str, now: datetime, batch_id: int | None = None
) -> None:
    """One ledger row per admitted disconnect (what the rate limits count)."""
    rows = [
        {"meter_id": m, "area": area, "admitted_at": now, "batch_id": batch_id, "actor": actor}
        for m, area in areas.items()
    ]
    if rows:
        conn.execute(_RECORD_DISCONNECT, rows)


# --- the two-person rule -------------------------------------------------------------------------


def create_batch(
    conn: Connection, command: str, areas: Mapping[int, str | None], *, requested_by: str, now: datetime
) -> int:
    """A held batch (awaiting-approval); returns its id."""
    names = sorted({a for a in areas.values() if a is not None})
    text = ",".join(names)
    if len(text) > 255:
        text = f"{len(names)} areas"
    values = {
        "command": command,
        "meter_count": len(areas),
        "meter_ids": json.dumps(sorted(areas)),
        "areas": text,
        "state": "awaiting-approval",
        "requested_by": requested_by,
        "requested_at": now,
    }
    return int(conn.execute(sa.insert(t.guard_batches).values(**values).returning(t.guard_batches.c.id)).scalar_one())


def _batch(row: sa.Row[Any]) -> Batch:
    m = row._mapping
    return Batch(
        id=m["id"],
        command=m["command"],
        meter_ids=tuple(int(x) for x in json.loads(m["meter_ids"])),
        areas=m["areas"],
        state=m["state"],
        requested_by=m["requested_by"],
        requested_at=m["requested_at"],
        decided_by=m["decided_by"],
        decided_at=m["decided_at"],
        note=m["note"],
    )


def get_batch(conn: Connection, batch_id: int) -> Batch:
    row = conn.execute(sa.select(t.guard_batches).where(t.guard_batches.c.id == batch_id)).first()
    if row is None:
        raise NotFound(f"no batch {batch_id}")
    return _batch(row)


def list_batches(conn: Connection, *, state: str | None = None, limit: int = 100) -> list[Batch]:
    query = sa.select(t.guard_batches).order_by(t.guard_batches.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(t.guard_batches.c.state == state)
    return [_batch(row) for row in conn.execute(query)]


def decide_batch(
    conn: Connection, batch_id: int, state: str, *, by: str, now: datetime, note: str | None = None
) -> bool:
    """awaiting-approval → ``state`` (approved or rejected); False when it was no longer awaiting."""
    gb = t.guard_batches
    result = conn.execute(
        sa.update(gb)
        .where(gb.c.id == batch_id, gb.c.state == "awaiting-approval")
        .values(state=state, decided_by=by, decided_at=now, note=note)
    )
    return result.rowcount == 1


# --- uncommanded openings ------------------------------------------------------------------------


def command_explains(conn: Connection, meter_id: int, counter: int) -> bool:
    """True when ``counter`` is the counter of a disconnect or limit command sent to ``meter_id``."""
    sc = t.switch_commands.c
    query = sa.select(sc.id).where(sc.meter_id == meter_id, sc.counter == counter, sc.command.in_(OPENING_COMMANDS))
    return conn.execute(query.limit(1)).first() is not None


def record_opening(
    conn: Connection,
    meter_id: int,
    area: str | None,
    *,
    meter_time: int,
    counter: int | None,
    uncommanded: bool,
    now: datetime,
) -> bool:
    """Remember one SWITCH_OPENED event; False when it was seen before (the bus delivers at least once)."""
    row = {"meter_id": meter_id, "area": area, "meter_time": meter_time, "seen_at": now, "counter": counter,
           "uncommanded": uncommanded}  # fmt: skip
    return insert_on_conflict(conn, t.guard_openings, [row], key=("meter_id", "meter_time")) == 1


def unalarmed_uncommanded(conn: Connection, area: str, since: datetime) -> list[int]:
    """Ids of the area's uncommanded openings seen since ``since`` that no alarm holds yet."""
    go = t.guard_openings.c
    query = sa.select(go.id).where(go.area == area, go.uncommanded, go.alarm_id.is_(None), go.seen_at >= since)
    return [int(i) for i in conn.execute(query.order_by(go.id)).scalars()]


def alarm_openings(conn: Connection, alarm_id: int) -> list[int]:
    """The meters whose openings an alarm holds."""
    go = t.guard_openings.c
    return [int(m) for m in conn.execute(sa.select(go.meter_id).where(go.alarm_id == alarm_id).distinct()).scalars()]


def open_alarm(conn: Connection, area: str) -> Alarm | None:
    ga = t.guard_alarms.c
    row = conn.execute(
        sa.select(t.guard_alarms).where(ga.area == area, ga.state == "open").order_by(ga.id.desc())
    ).first()
    return None if row is None else _alarm(row)


def create_alarm(conn: Connection, area: str, *, openings: int, threshold: int, window_s: int, now: datetime) -> int:
    values = {"area": area, "state": "open", "opened_at": now, "openings": openings, "threshold": threshold,
              "window_s": window_s}  # fmt: skip
    return int(conn.execute(sa.insert(t.guard_alarms).values(**values).returning(t.guard_alarms.c.id)).scalar_one())


def attach_openings(conn: Connection, alarm_id: int, opening_ids: Sequence[int]) -> None:
    """Hold ``opening_ids`` in the alarm and count them."""
    if not opening_ids:
        return
    go, ga = t.guard_openings, t.guard_alarms
    conn.execute(sa.update(go).where(go.c.id.in_(list(opening_ids))).values(alarm_id=alarm_id))
    held = sa.select(sa.func.count()).where(go.c.alarm_id == alarm_id).scalar_subquery()
    conn.execute(sa.update(ga).where(ga.c.id == alarm_id).values(openings=held))


def mark_alarm_mode_sent(conn: Connection, alarm_id: int) -> None:
    conn.execute(sa.update(t.guard_alarms).where(t.guard_alarms.c.id == alarm_id).values(ignore_disconnects_sent=True))


def clear_alarm(conn: Connection, alarm_id: int, *, by: str, now: datetime) -> bool:
    """open → cleared; False when it was not open."""
    ga = t.guard_alarms
    result = conn.execute(
        sa.update(ga).where(ga.c.id == alarm_id, ga.c.state == "open").values(state="cleared", cleared_by=by,
                                                                            cleared_at=now)
    )  # fmt: skip
    return result.rowcount == 1


def _alarm(row: sa.Row[Any]) -> Alarm:
    m = row._mapping
    return Alarm(
        id=m["id"],
        area=m["area"],
        state=m["state"],
        opened_at=m["opened_at"],
        openings=m["openings"],
        threshold=m["threshold"],
        window_s=m["window_s"],
        ignore_disconnects_sent=bool(m["ignore_disconnects_sent"]),
        cleared_by=m["cleared_by"],
        cleared_at=m["cleared_at"],
    )


def get_alarm(conn: Connection, alarm_id: int) -> Alarm:
    row = conn.execute(sa.select(t.guard_alarms).where(t.guard_alarms.c.id == alarm_id)).first()
    if row is None:
        raise NotFound(f"no alarm {alarm_id}")
    return _alarm(row)


def list_alarms(conn: Connection, *, state: str | None = None, limit: int = 100) -> list[Alarm]:
    query = sa.select(t.guard_alarms).order_by(t.guard_alarms.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(t.guard_alarms.c.state == state)
    return [_alarm(row) for row in conn.execute(query)]


# --- ignore-disconnects mode ---------------------------------------------------------------------


def ignoring_areas(conn: Connection, areas: Iterable[str | None]) -> set[str]:
    """The areas among ``areas`` whose meters are in ignore-disconnects mode."""
    wanted = sorted({a for a in areas if a is not None})
    if not wanted:
        return set()
    if len(wanted) == 1:
        return {str(a) for a in conn.execute(_IGNORING_ONE, {"area": wanted[0]}).scalars()}
    return {str(a) for a in conn.execute(_IGNORING, {"areas": wanted}).scalars()}


def set_area_mode(
    conn: Connection, area: str, *, on: bool, by: str, now: datetime, reason: str, alarm_id: int | None = None
) -> None:
    row = {"area": area, "ignore_disconnects": on, "changed_by": by, "changed_at": now, "reason": reason[:255],
           "alarm_id": alarm_id}  # fmt: skip
    insert_on_conflict(
        conn, t.guard_area_modes, [row], key=("area",),
        update=("ignore_disconnects", "changed_by", "changed_at", "reason", "alarm_id"),
    )  # fmt: skip


def list_area_modes(conn: Connection) -> list[AreaMode]:
    rows = conn.execute(sa.select(t.guard_area_modes).order_by(t.guard_area_modes.c.area))
    return [AreaMode(**{k: v for k, v in row._mapping.items()}) for row in rows]
