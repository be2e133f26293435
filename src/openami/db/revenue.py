"""Revenue protection storage: check meters, premise flags, cases and their history, the watch list,
energy balances, and the read-only queries the rules need (sums of stored intervals, registers, the
last confirmed switch command).

Repositories only execute: the caller owns the transaction. Energies are Wh (interval channels are
always Wh, see ``domain.codes.ChannelCode``; register snapshots are converted from their unit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import tables as t
from openami.db._upsert import insert_on_conflict
from openami.domain.codes import ChannelCode

__all__ = [
    "BalanceRow",
    "CaseRow",
    "HistoryRow",
    "WatchRow",
    "add_history",
    "check_meter_ids",
    "check_meters",
    "clear_transformer_watch",
    "clear_watch",
    "energy_by_meter",
    "evidence_recorded",
    "evidence_seen_for_meter",
    "get_case",
    "insert_balance",
    "insert_case",
    "interval_totals",
    "last_switch_commands",
    "list_balances",
    "list_cases",
    "list_history",
    "list_watch",
    "meters_on_transformer",
    "open_case_for_meter",
    "open_case_for_transformer",
    "premise_flags",
    "premises_of",
    "record_check_meters",
    "register_near",
    "set_premise_flags",
    "transformers_of",
    "update_case",
    "upsert_watch",
]

_CHUNK = 500
IMPORT_OBIS = "1.0.1.8.0.255"
_UNIT_TO_WH = {"wh": 1.0, "kwh": 1_000.0, "mwh": 1_000_000.0}


# --- check meters and premise flags ---------------------------------------------------------------


def record_check_meters(conn: Connection, pairs: Mapping[int, str], *, now: datetime) -> int:
    """Record which transformer each check meter measures (meter id → transformer id); re-recording moves it."""
    rows = [{"meter_id": m, "transformer_id": x, "registered_at": now} for m, x in pairs.items()]
    return insert_on_conflict(conn, t.transformer_check_meters, rows, key=("meter_id",), update=("transformer_id",))


def check_meters(conn: Connection, transformer_ids: Sequence[str] | None = None) -> dict[str, int]:
    """transformer id → its check meter (the lowest meter id when a transformer has several)."""
    tcm = t.transformer_check_meters
    query = sa.select(tcm.c.transformer_id, sa.func.min(tcm.c.meter_id)).group_by(tcm.c.transformer_id)
    if transformer_ids is None:
        return {str(x): int(m) for x, m in conn.execute(query)}
    found: dict[str, int] = {}
    wanted = list(transformer_ids)
    for i in range(0, len(wanted), _CHUNK):  # bounded IN lists (SQLite's variable limit)
        chunk = query.where(tcm.c.transformer_id.in_(wanted[i : i + _CHUNK]))
        found.update({str(x): int(m) for x, m in conn.execute(chunk)})
    return found


def check_meter_ids(conn: Connection) -> set[int]:
    """Every check meter (the per-meter anomaly rules are about customers' meters and leave them out)."""
    return {int(m) for m in conn.execute(sa.select(t.transformer_check_meters.c.meter_id)).scalars()}


def meters_on_transformer(conn: Connection, transformer_id: str) -> list[int]:
    """The customer meters whose service point hangs on the transformer (check meters have none)."""
    sp = t.service_points
    query = (
        sa.select(t.meters.c.id)
        .join(sp, sp.c.id == t.meters.c.service_point_id)
        .where(sp.c.transformer_id == transformer_id)
        .order_by(t.meters.c.id)
    )
    return [int(m) for m in conn.execute(query).scalars()]


def transformers_of(conn: Connection, meter_ids: Sequence[int]) -> set[str]:
    """The transformers the meters hang on, or that they are the check meter of."""
    found: set[str] = set()
    sp, tcm = t.service_points, t.transformer_check_meters
    for i in range(0, len(meter_ids), _CHUNK):
        chunk = list(meter_ids[i : i + _CHUNK])
        on = sa.select(sp.c.transformer_id).join(t.meters, t.meters.c.service_point_id == sp.c.id)
        found.update(str(x) for x in conn.execute(on.where(t.meters.c.id.in_(chunk))).scalars())
        checks = sa.select(tcm.c.transformer_id).where(tcm.c.meter_id.in_(chunk))
        found.update(str(x) for x in conn.execute(checks).scalars())
    return found


def premises_of(conn: Connection, meter_ids: Sequence[int]) -> dict[int, str]:
    """meter id → the premise it serves (meters without a service point are left out)."""
    sp = t.service_points
    found: dict[int, str] = {}
    for i in range(0, len(meter_ids), _CHUNK):
        query = (
            sa.select(t.meters.c.id, sp.c.premise_id)
            .join(sp, sp.c.id == t.meters.c.service_point_id)
            .where(t.meters.c.id.in_(list(meter_ids[i : i + _CHUNK])))
        )
        found.update({int(m): str(p) for m, p in conn.execute(query)})
    return found


@dataclass(frozen=True, slots=True)
class PremiseFlags:
    premise_id: str
    vacant: bool
    vacant_since: datetime | None
    has_generation: bool
    updated_by: str
    updated_at: datetime


def premise_flags(conn: Connection, premise_ids: Sequence[str] | None = None) -> dict[str, PremiseFlags]:
    """Flags of the given premises (or of every flagged premise); a premise without a row has none set."""
    pf = t.premise_flags
    query = sa.select(pf)
    if premise_ids is None:
        queries = [query]
    else:
        wanted = list(premise_ids)
        queries = [query.where(pf.c.premise_id.in_(wanted[i : i + _CHUNK])) for i in range(0, len(wanted), _CHUNK)]
    return {
        row.premise_id: PremiseFlags(
            row.premise_id, bool(row.vacant), row.vacant_since, bool(row.has_generation), row.updated_by, row.updated_at
        )
        for each in queries
        for row in conn.execute(each)
    }


def set_premise_flags(
    conn: Connection, premise_id: str, *, vacant: bool | None, has_generation: bool | None, actor: str, now: datetime
) -> PremiseFlags:
    """Set the given flags (None leaves one as it is); becoming vacant starts ``vacant_since`` at ``now``."""
    current = premise_flags(conn, [premise_id]).get(premise_id)
    was_vacant = current is not None and current.vacant
    new_vacant = was_vacant if vacant is None else vacant
    since = (current.vacant_since if was_vacant and current is not None else now) if new_vacant else None
    generation = (current.has_generation if current else False) if has_generation is None else has_generation
    row = {
        "premise_id": premise_id,
        "vacant": new_vacant,
        "vacant_since": since,
        "has_generation": generation,
        "updated_by": actor,
        "updated_at": now,
    }
    update = [c for c in row if c != "premise_id"]
    insert_on_conflict(conn, t.premise_flags, [row], key=("premise_id",), update=update)
    return PremiseFlags(premise_id, new_vacant, since, generation, actor, now)


# --- cases ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseRow:
    id: int
    meter_id: int | None
    transformer_id: str | None
    state: str
    reason: str
    summary: str
    assignee: str | None
    opened_by: str
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: int
    case_id: int
    at: datetime
    actor: str
    kind: str  # opened, state, assigned, note, evidence
    from_state: str | None
    to_state: str | None
    text: str | None
    evidence_key: str | None


def _case(row: Any) -> CaseRow:
    return CaseRow(
        int(row.id), None if row.meter_id is None else int(row.meter_id), row.transformer_id, row.state, row.reason,
        row.summary, row.assignee, row.opened_by, row.opened_at, row.updated_at, row.closed_at,
    )  # fmt: skip


def insert_case(
    conn: Connection,
    *,
    meter_id: int | None,
    transformer_id: str | None,
    reason: str,
    summary: str,
    actor: str,
    now: datetime,
) -> CaseRow:
    """A new case in state ``open`` (raises IntegrityError when the meter/transformer has an open one)."""
    rc = t.revenue_cases
    values = {
        "meter_id": meter_id, "transformer_id": transformer_id, "state": "open", "reason": reason,
        "summary": summary[:255], "opened_by": actor, "opened_at": now, "updated_at": now,
    }  # fmt: skip
    case_id = conn.execute(sa.insert(rc).values(**values).returning(rc.c.id)).scalar_one()
    found = get_case(conn, int(case_id))
    assert found is not None  # just inserted in this transaction
    return found


def get_case(conn: Connection, case_id: int, *, for_update: bool = False) -> CaseRow | None:
    query = sa.select(t.revenue_cases).where(t.revenue_cases.c.id == case_id)
    row = conn.execute(query.with_for_update() if for_update else query).one_or_none()
    return None if row is None else _case(row)


def open_case_for_meter(conn: Connection, meter_id: int) -> CaseRow | None:
    """The meter's case that is not closed, if any (there is at most one)."""
    rc = t.revenue_cases
    query = sa.select(rc).where(rc.c.meter_id == meter_id, rc.c.state != "closed")
    row = conn.execute(query).first()
    return None if row is None else _case(row)


def open_case_for_transformer(conn: Connection, transformer_id: str) -> CaseRow | None:
    """The transformer's own case (no meter) that is not closed, if any."""
    rc = t.revenue_cases
    query = sa.select(rc).where(rc.c.transformer_id == transformer_id, rc.c.meter_id.is_(None), rc.c.state != "closed")
    row = conn.execute(query).first()
    return None if row is None else _case(row)


def update_case(conn: Connection, case_id: int, *, now: datetime, **values: Any) -> None:
    conn.execute(sa.update(t.revenue_cases).where(t.revenue_cases.c.id == case_id).values(updated_at=now, **values))


def list_cases(  # noqa: PLR0913 - one optional keyword per filter the API and CLI offer
    conn: Connection,
    *,
    state: str | None = None,
    meter_id: int | None = None,
    transformer_id: str | None = None,
    assignee: str | None = None,
    reason: str | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[CaseRow]:
    """Cases by id, filtered; page with ``after_id`` (keyset)."""
    rc = t.revenue_cases
    query = sa.select(rc)
    for column, wanted in (
        (rc.c.state, state), (rc.c.meter_id, meter_id), (rc.c.transformer_id, transformer_id),
        (rc.c.assignee, assignee), (rc.c.reason, reason),
    ):  # fmt: skip
        if wanted is not None:
            query = query.where(column == wanted)
    if after_id is not None:
        query = query.where(rc.c.id > after_id)
    return [_case(row) for row in conn.execute(query.order_by(rc.c.id).limit(limit))]


def add_history(  # noqa: PLR0913 - the columns of one history row
    conn: Connection,
    case_id: int,
    *,
    kind: str,
    actor: str,
    now: datetime,
    from_state: str | None = None,
    to_state: str | None = None,
    text: str | None = None,
    evidence_key: str | None = None,
) -> int:
    h = t.revenue_case_history
    values = {
        "case_id": case_id, "at": now, "actor": actor, "kind": kind, "from_state": from_state,
        "to_state": to_state, "text": text, "evidence_key": evidence_key,
    }  # fmt: skip
    return int(conn.execute(sa.insert(h).values(**values).returning(h.c.id)).scalar_one())


def evidence_recorded(conn: Connection, case_id: int, evidence_key: str) -> bool:
    h = t.revenue_case_history
    query = sa.select(h.c.id).where(h.c.case_id == case_id, h.c.evidence_key == evidence_key)
    return conn.execute(query).first() is not None


def evidence_seen_for_meter(conn: Connection, meter_id: int, evidence_key: str) -> bool:
    """Whether any case of the meter (closed ones too) already holds this evidence."""
    h, rc = t.revenue_case_history, t.revenue_cases
    query = (
        sa.select(h.c.id)
        .join(rc, rc.c.id == h.c.case_id)
        .where(rc.c.meter_id == meter_id, h.c.evidence_key == evidence_key)
        .limit(1)
    )
    return conn.execute(query).first() is not None


def list_history(conn: Connection, case_id: int) -> list[HistoryRow]:
    h = t.revenue_case_history
    rows = conn.execute(sa.select(h).where(h.c.case_id == case_id).order_by(h.c.id))
    return [
        HistoryRow(int(r.id), int(r.case_id), r.at, r.actor, r.kind, r.from_state, r.to_state, r.text, r.evidence_key)
        for r in rows
    ]


# --- watch list -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchRow:
    id: int
    meter_id: int | None
    transformer_id: str | None
    rule: str
    evidence: dict[str, Any]
    since: datetime
    last_seen_at: datetime
    cleared_at: datetime | None
    case_id: int | None


def _watch(row: Any) -> WatchRow:
    return WatchRow(
        int(row.id), None if row.meter_id is None else int(row.meter_id), row.transformer_id, row.rule,
        json.loads(row.evidence), row.since, row.last_seen_at, row.cleared_at,
        None if row.case_id is None else int(row.case_id),
    )  # fmt: skip


def _open_watch(conn: Connection, meter_id: int | None, transformer_id: str | None, rule: str) -> WatchRow | None:
    w = t.revenue_watch
    query = sa.select(w).where(w.c.rule == rule, w.c.cleared_at.is_(None))
    if meter_id is not None:
        query = query.where(w.c.meter_id == meter_id)
    else:
        query = query.where(w.c.meter_id.is_(None), w.c.transformer_id == transformer_id)
    row = conn.execute(query).first()
    return None if row is None else _watch(row)


def upsert_watch(
    conn: Connection,
    *,
    meter_id: int | None,
    transformer_id: str | None,
    rule: str,
    evidence: Mapping[str, Any],
    now: datetime,
    case_id: int | None = None,
) -> tuple[int, bool]:
    """Open a watch entry, or refresh the open one of (meter or transformer, rule); returns (id, new)."""
    w = t.revenue_watch
    text = json.dumps(evidence, sort_keys=True, separators=(",", ":"), default=str)
    found = _open_watch(conn, meter_id, transformer_id, rule)
    if found is not None:
        values: dict[str, Any] = {"evidence": text, "last_seen_at": now}
        if case_id is not None:
            values["case_id"] = case_id
        conn.execute(sa.update(w).where(w.c.id == found.id).values(**values))
        return found.id, False
    values = {
        "meter_id": meter_id, "transformer_id": transformer_id, "rule": rule, "evidence": text, "since": now,
        "last_seen_at": now, "case_id": case_id,
    }  # fmt: skip
    return int(conn.execute(sa.insert(w).values(**values).returning(w.c.id)).scalar_one()), True


def clear_watch(conn: Connection, rule: str, meter_ids: Sequence[int], keep: set[int], *, now: datetime) -> int:
    """Clear the open entries of ``rule`` for the examined ``meter_ids`` that no longer fire (not in ``keep``)."""
    w = t.revenue_watch
    gone = [m for m in meter_ids if m not in keep]
    cleared = 0
    for i in range(0, len(gone), _CHUNK):
        stmt = (
            sa.update(w)
            .where(w.c.rule == rule, w.c.cleared_at.is_(None), w.c.meter_id.in_(gone[i : i + _CHUNK]))
            .values(cleared_at=now)
        )
        cleared += int(conn.execute(stmt).rowcount)
    return cleared


def clear_transformer_watch(conn: Connection, rule: str, transformer_id: str, *, now: datetime) -> int:
    """Clear every open entry of ``rule`` naming ``transformer_id`` (its balance is within tolerance again)."""
    w = t.revenue_watch
    stmt = (
        sa.update(w)
        .where(w.c.rule == rule, w.c.cleared_at.is_(None), w.c.transformer_id == transformer_id)
        .values(cleared_at=now)
    )
    return int(conn.execute(stmt).rowcount)


def list_watch(
    conn: Connection,
    *,
    rule: str | None = None,
    meter_id: int | None = None,
    transformer_id: str | None = None,
    include_cleared: bool = False,
    limit: int = 500,
) -> list[WatchRow]:
    w = t.revenue_watch
    query = sa.select(w)
    if not include_cleared:
        query = query.where(w.c.cleared_at.is_(None))
    for column, wanted in ((w.c.rule, rule), (w.c.meter_id, meter_id), (w.c.transformer_id, transformer_id)):
        if wanted is not None:
            query = query.where(column == wanted)
    return [_watch(row) for row in conn.execute(query.order_by(w.c.id.desc()).limit(limit))]


# --- energy balances ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BalanceRow:
    id: int
    transformer_id: str
    check_meter_id: int
    period_start: int
    period_end: int
    intervals: int
    meters: int
    check_wh: float
    meters_wh: float
    loss_wh: float
    loss_share: float | None
    tolerance: float
    flagged: bool
    suspects: list[int]
    computed_at: datetime


def insert_balance(conn: Connection, values: Mapping[str, Any]) -> int:
    """Store one computed balance (``suspects`` a list of meter ids); returns its id."""
    row = {**values, "suspects": json.dumps(list(values["suspects"]))}
    eb = t.energy_balances
    return int(conn.execute(sa.insert(eb).values(**row).returning(eb.c.id)).scalar_one())


def list_balances(conn: Connection, transformer_id: str | None = None, *, limit: int = 50) -> list[BalanceRow]:
    eb = t.energy_balances
    query = sa.select(eb)
    if transformer_id is not None:
        query = query.where(eb.c.transformer_id == transformer_id)
    rows = conn.execute(query.order_by(eb.c.id.desc()).limit(limit))
    return [
        BalanceRow(
            int(r.id),
            r.transformer_id,
            int(r.check_meter_id),
            int(r.period_start),
            int(r.period_end),
            int(r.intervals),
            int(r.meters),
            float(r.check_wh),
            float(r.meters_wh),
            float(r.loss_wh),
            None if r.loss_share is None else float(r.loss_share),
            float(r.tolerance),
            bool(r.flagged),
            [int(m) for m in json.loads(r.suspects)],
            r.computed_at,
        )
        for r in rows
    ]


# --- what the rules read --------------------------------------------------------------------------


def interval_totals(
    conn: Connection, meter_ids: Sequence[int], first_end: int, last_end: int, channel: ChannelCode
) -> dict[int, dict[int, float]]:
    """Stored energy per meter and interval end, ``first_end <= interval_end <= last_end`` (Wh)."""
    ir = t.interval_readings
    found: dict[int, dict[int, float]] = {}
    for i in range(0, len(meter_ids), _CHUNK):
        query = sa.select(ir.c.meter_id, ir.c.interval_end, ir.c.value).where(
            ir.c.meter_id.in_(list(meter_ids[i : i + _CHUNK])),
            ir.c.channel == int(channel),
            ir.c.interval_end >= first_end,
            ir.c.interval_end <= last_end,
        )
        for meter_id, end, value in conn.execute(query):
            found.setdefault(int(meter_id), {})[int(end)] = float(value)
    return found


def energy_by_meter(
    conn: Connection, meter_ids: Sequence[int], first_end: int, last_end: int, channel: ChannelCode
) -> dict[int, tuple[float, int]]:
    """meter id → (sum in Wh, number of stored intervals) over ``first_end <= interval_end <= last_end``."""
    ir = t.interval_readings
    found: dict[int, tuple[float, int]] = {}
    for i in range(0, len(meter_ids), _CHUNK):
        query = (
            sa.select(ir.c.meter_id, sa.func.sum(ir.c.value), sa.func.count())
            .where(
                ir.c.meter_id.in_(list(meter_ids[i : i + _CHUNK])),
                ir.c.channel == int(channel),
                ir.c.interval_end >= first_end,
                ir.c.interval_end <= last_end,
            )
            .group_by(ir.c.meter_id)
        )
        found.update({int(m): (float(s or 0.0), int(n)) for m, s, n in conn.execute(query)})
    return found


def register_near(conn: Connection, meter_id: int, at: int, window_s: int) -> tuple[float, int] | None:
    """The active-import register snapshot nearest to ``at`` within ``window_s`` as (Wh, captured_at)."""
    rs = t.register_snapshots
    query = sa.select(rs.c.value, rs.c.unit, rs.c.captured_at).where(
        rs.c.meter_id == meter_id,
        rs.c.obis == IMPORT_OBIS,
        rs.c.captured_at >= at - window_s,
        rs.c.captured_at <= at + window_s,
    )
    best: tuple[float, int] | None = None
    for value, unit, captured_at in conn.execute(query):
        scale = _UNIT_TO_WH.get(str(unit).strip().lower())
        if scale is None:
            continue  # a unit we cannot convert is no evidence
        if best is None or abs(int(captured_at) - at) < abs(best[1] - at):
            best = (float(value) * scale, int(captured_at))
    return best


@dataclass(frozen=True, slots=True)
class SwitchCommand:
    """A confirmed switch command as the rules see it."""

    id: int
    meter_id: int
    command: str  # disconnect, reconnect, reconnect-arm
    confirmed_at: datetime
    final_import_wh: float | None
    workflow: str | None


_SWITCHING = ("disconnect", "reconnect", "reconnect-arm")


def last_switch_commands(
    conn: Connection, meter_ids: Sequence[int], *, per_meter: int = 2
) -> dict[int, list[SwitchCommand]]:
    """The newest confirmed disconnect/reconnect commands of each meter, newest first (empty without the table)."""
    sc = t.metadata.tables.get("switch_commands")  # the switch part's table (migration 0007)
    if sc is None:
        return {}
    found: dict[int, list[SwitchCommand]] = {}
    for i in range(0, len(meter_ids), _CHUNK):
        query = (
            sa.select(sc.c.id, sc.c.meter_id, sc.c.command, sc.c.confirmed_at, sc.c.final_import_wh, sc.c.workflow)
            .where(
                sc.c.meter_id.in_(list(meter_ids[i : i + _CHUNK])),
                sc.c.status == "confirmed",
                sc.c.command.in_(_SWITCHING),
                sc.c.confirmed_at.is_not(None),
            )
            .order_by(sc.c.meter_id, sc.c.confirmed_at.desc(), sc.c.id.desc())
        )
        for row in conn.execute(query):
            mine = found.setdefault(int(row.meter_id), [])
            if len(mine) < per_meter:
                final = None if row.final_import_wh is None else float(row.final_import_wh)
                mine.append(
                    SwitchCommand(int(row.id), int(row.meter_id), row.command, row.confirmed_at, final, row.workflow)
                )
    return found
