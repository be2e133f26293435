"""Storage of prepayment: tariffs, accounts, the append-only credit ledger, debited intervals, alerts.

Repository functions only: they execute on the caller's connection and never commit. Money is integer
micro-units of the currency's major unit and energy integer mWh (``services.prepay_rules``).

``post`` is the one way a ledger entry is written: it moves the account's cached balance with
``UPDATE ... RETURNING`` first (a row lock on PostgreSQL, the write lock on SQLite), so concurrent
postings to one account are serialised and every entry's ``balance_after`` is exactly the previous
entry's plus its amount. The database refuses UPDATE and DELETE on ``prepay_ledger`` (migration 0009).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement

from openami.db._upsert import insert_on_conflict
from openami.db.tables import feeders, meters, premises, register_snapshots, service_points, transformers
from openami.db.tables import prepay_accounts as pa
from openami.db.tables import prepay_alerts as pal
from openami.db.tables import prepay_debits as pd
from openami.db.tables import prepay_ledger as pl
from openami.db.tables import prepay_tariffs as pt
from openami.errors import Conflict, NotFound

__all__ = [
    "Account",
    "Alert",
    "Debit",
    "Entry",
    "Posting",
    "Tariff",
    "accounts",
    "alerts",
    "clear_alerts",
    "debited_energy",
    "debits_between",
    "enrolled_meters",
    "entry_by_key",
    "get_account",
    "get_tariff",
    "insert_account",
    "insert_alert",
    "insert_tariff",
    "ledger",
    "lock_account",
    "meter_care",
    "meter_premise",
    "open_alert_kinds",
    "post",
    "register_values",
    "tariffs",
    "update_account",
    "write_debits",
]


@dataclass(frozen=True, slots=True)
class Tariff:
    id: int
    code: str
    name: str
    currency: str
    price_per_kwh: int  # micro-units per kWh
    standing_charge_per_day: int  # micro-units per day
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    meter_id: int
    premise_id: str | None
    currency: str
    tariff_id: int
    low_credit_threshold: int
    friendly_hours: str
    state: str  # "connected" | "disconnected"
    credit_state: str  # "ok" | "low" | "zero"
    balance: int
    entries: int
    debit_from: int
    debited_through: int
    standing_through: int
    last_command_id: int | None
    last_switch_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    account_id: int
    seq: int
    kind: str
    amount: int
    balance_after: int
    energy_mwh: int | None
    period_start: int | None
    period_end: int | None
    reference: str
    idempotency_key: str | None
    actor: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Debit:
    """What one import interval was debited: the reading version priced, its energy, price and amount."""

    interval_end: int
    version: int
    energy_mwh: int
    price_per_kwh: int
    amount: int


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    account_id: int
    kind: str
    balance: int
    raised_at: datetime
    cleared_at: datetime | None
    meter_id: int  # the account's
    currency: str


def _row(cls: Any, row: Row[Any]) -> Any:
    return cls(**row._mapping)


# --- tariffs ---------------------------------------------------------------------------------------


def insert_tariff(conn: Connection, values: Mapping[str, Any]) -> int:
    """Store a tariff; Conflict when its code is taken."""
    if conn.execute(sa.select(pt.c.id).where(pt.c.code == values["code"])).first() is not None:
        raise Conflict(f"tariff {str(values['code'])[:32]!r} exists already (tariffs are immutable)")
    return int(conn.execute(pt.insert().values(**values).returning(pt.c.id)).scalar_one())


def get_tariff(conn: Connection, tariff_id: int | None = None, *, code: str | None = None) -> Tariff:
    """One tariff by id or code; NotFound."""
    where = pt.c.id == tariff_id if code is None else pt.c.code == code
    row = conn.execute(sa.select(pt).where(where)).first()
    if row is None:
        raise NotFound(f"no tariff {code[:32]!r}" if code is not None else f"no tariff {tariff_id}")
    tariff: Tariff = _row(Tariff, row)
    return tariff


def tariffs(conn: Connection) -> list[Tariff]:
    return [_row(Tariff, row) for row in conn.execute(sa.select(pt).order_by(pt.c.code))]


# --- accounts --------------------------------------------------------------------------------------


def meter_premise(conn: Connection, meter_id: int) -> tuple[bool, str | None]:
    """(the meter exists, the premise it serves or None)."""
    query = (
        sa.select(meters.c.id, premises.c.id)
        .select_from(meters)
        .outerjoin(service_points, service_points.c.id == meters.c.service_point_id)
        .outerjoin(premises, premises.c.id == service_points.c.premise_id)
        .where(meters.c.id == meter_id)
    )
    row = conn.execute(query).first()
    return (False, None) if row is None else (True, row[1])


def meter_care(conn: Connection, meter_id: int) -> tuple[str | None, bool]:
    """(the meter's area (substation) or None, whether its premise is flagged critical care)."""
    sp, tr, fd = service_points, transformers, feeders
    query = (
        sa.select(fd.c.substation_id, premises.c.critical_care)
        .select_from(meters)
        .outerjoin(sp, sp.c.id == meters.c.service_point_id)
        .outerjoin(tr, tr.c.id == sp.c.transformer_id)
        .outerjoin(fd, fd.c.id == tr.c.feeder_id)
        .outerjoin(premises, premises.c.id == sp.c.premise_id)
        .where(meters.c.id == meter_id)
    )
    row = conn.execute(query).first()
    return (None, False) if row is None else (row[0], bool(row[1]))


def insert_account(conn: Connection, values: Mapping[str, Any]) -> int:
    """Store a new account; Conflict when the meter has one already."""
    if conn.execute(sa.select(pa.c.id).where(pa.c.meter_id == values["meter_id"])).first() is not None:
        raise Conflict(f"meter {values['meter_id']} is already enrolled in prepayment")
    return int(conn.execute(pa.insert().values(**values).returning(pa.c.id)).scalar_one())


def get_account(
    conn: Connection, account_id: int | None = None, *, meter_id: int | None = None,
    visible: ColumnElement[bool] | None = None,
) -> Account | None:  # fmt: skip
    """One account by id or meter; None when absent or outside ``visible`` (a policy clause on meters)."""
    query = sa.select(pa).where(pa.c.id == account_id if meter_id is None else pa.c.meter_id == meter_id)
    if visible is not None:
        query = query.where(pa.c.meter_id.in_(sa.select(meters.c.id).where(visible)))
    row = conn.execute(query).first()
    return None if row is None else _row(Account, row)


def accounts(
    conn: Connection, *, visible: ColumnElement[bool] | None = None, states: Sequence[str] = (),
    credit_states: Sequence[str] = (), limit: int = 1000, after_id: int = 0,
) -> list[Account]:  # fmt: skip
    query = sa.select(pa).where(pa.c.id > after_id)
    if visible is not None:
        query = query.where(pa.c.meter_id.in_(sa.select(meters.c.id).where(visible)))
    if states:
        query = query.where(pa.c.state.in_(list(states)))
    if credit_states:
        query = query.where(pa.c.credit_state.in_(list(credit_states)))
    return [_row(Account, row) for row in conn.execute(query.order_by(pa.c.id).limit(limit))]


def enrolled_meters(conn: Connection) -> set[int]:
    return set(conn.execute(sa.select(pa.c.meter_id)).scalars())


def lock_account(conn: Connection, account_id: int, *, now: datetime) -> Account:
    """The account, locked for the rest of the transaction (postings to it wait); NotFound."""
    stmt = pa.update().where(pa.c.id == account_id).values(updated_at=now).returning(*pa.c)
    row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"no prepayment account {account_id}")
    account: Account = _row(Account, row)
    return account


def update_account(conn: Connection, account_id: int, **values: Any) -> None:
    conn.execute(pa.update().where(pa.c.id == account_id).values(**values))


# --- the ledger ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posting:
    """What to append: ``amount`` is signed micro-units (debits negative)."""

    kind: str  # payment, consumption, standing-charge, adjustment, correction
    amount: int
    reference: str
    energy_mwh: int | None = None
    period: tuple[int, int] | None = None  # (first, last) interval end or (day start, day end), epoch s
    idempotency_key: str | None = None


def post(conn: Connection, account_id: int, posting: Posting, *, actor: str, at: datetime) -> Entry:
    """Append one entry: the balance moves by ``posting.amount`` and the entry records the balance after it."""
    moved = conn.execute(
        pa.update()
        .where(pa.c.id == account_id)
        .values(balance=pa.c.balance + posting.amount, entries=pa.c.entries + 1, updated_at=at)
        .returning(pa.c.balance, pa.c.entries)
    ).first()
    if moved is None:
        raise NotFound(f"no prepayment account {account_id}")
    entry = Entry(
        id=0, account_id=account_id, seq=int(moved[1]), kind=posting.kind, amount=posting.amount,
        balance_after=int(moved[0]), energy_mwh=posting.energy_mwh,
        period_start=None if posting.period is None else posting.period[0],
        period_end=None if posting.period is None else posting.period[1], reference=posting.reference[:128],
        idempotency_key=posting.idempotency_key, actor=actor[:128], at=at,
    )  # fmt: skip
    values = {name: getattr(entry, name) for name in Entry.__slots__ if name != "id"}
    entry_id = int(conn.execute(pl.insert().values(**values).returning(pl.c.id)).scalar_one())
    return replace(entry, id=entry_id)


def entry_by_key(conn: Connection, account_id: int, idempotency_key: str) -> Entry | None:
    query = sa.select(pl).where(pl.c.account_id == account_id, pl.c.idempotency_key == idempotency_key)
    row = conn.execute(query).first()
    return None if row is None else _row(Entry, row)


def ledger(
    conn: Connection, account_id: int, *, limit: int = 100, before_seq: int | None = None,
    kinds: Sequence[str] = (),
) -> list[Entry]:  # fmt: skip
    """Entries of one account, newest first; ``before_seq`` pages back."""
    query = sa.select(pl).where(pl.c.account_id == account_id)
    if before_seq is not None:
        query = query.where(pl.c.seq < before_seq)
    if kinds:
        query = query.where(pl.c.kind.in_(list(kinds)))
    return [_row(Entry, row) for row in conn.execute(query.order_by(pl.c.seq.desc()).limit(limit))]


# --- debited intervals -----------------------------------------------------------------------------


def debits_between(conn: Connection, account_id: int, start: int, end: int) -> dict[int, Debit]:
    """The intervals debited with ``start <= interval_end <= end``, by interval end."""
    query = sa.select(pd.c.interval_end, pd.c.version, pd.c.energy_mwh, pd.c.price_per_kwh, pd.c.amount).where(
        pd.c.account_id == account_id, pd.c.interval_end >= start, pd.c.interval_end <= end
    )
    return {row[0]: Debit(*row) for row in conn.execute(query)}


def write_debits(conn: Connection, account_id: int, entry_id: int, debits: Iterable[Debit]) -> None:
    """Record (or re-record, after a correction) what each interval was debited."""
    rows = [
        {"account_id": account_id, "interval_end": d.interval_end, "version": d.version, "energy_mwh": d.energy_mwh,
         "price_per_kwh": d.price_per_kwh, "amount": d.amount, "entry_id": entry_id}
        for d in debits
    ]  # fmt: skip
    update = ("version", "energy_mwh", "price_per_kwh", "amount", "entry_id")
    insert_on_conflict(conn, pd, rows, key=("account_id", "interval_end"), update=update)


def debited_energy(conn: Connection, account_id: int, after: int, through: int) -> tuple[int, int]:
    """(mWh, intervals) debited for intervals ending in ``(after, through]``."""
    query = sa.select(sa.func.coalesce(sa.func.sum(pd.c.energy_mwh), 0), sa.func.count()).where(
        pd.c.account_id == account_id, pd.c.interval_end > after, pd.c.interval_end <= through
    )
    total, count = conn.execute(query).one()
    return int(total), int(count)


def register_values(conn: Connection, meter_id: int, obis: str, start: int, end: int) -> list[tuple[int, float, str]]:
    """(captured_at, value, unit) of a meter's register snapshots with ``start <= captured_at <= end``."""
    rs = register_snapshots
    query = (
        sa.select(rs.c.captured_at, rs.c.value, rs.c.unit)
        .where(rs.c.meter_id == meter_id, rs.c.obis == obis, rs.c.captured_at >= start, rs.c.captured_at <= end)
        .order_by(rs.c.captured_at)
    )
    return [(int(row[0]), float(row[1]), str(row[2])) for row in conn.execute(query)]


# --- alerts ----------------------------------------------------------------------------------------


def insert_alert(conn: Connection, account_id: int, kind: str, balance: int, *, at: datetime) -> int:
    values = {"account_id": account_id, "kind": kind, "balance": balance, "raised_at": at}
    return int(conn.execute(pal.insert().values(**values).returning(pal.c.id)).scalar_one())


def clear_alerts(conn: Connection, account_id: int, kinds: Sequence[str], *, at: datetime) -> int:
    """Mark the account's open alerts of ``kinds`` cleared; returns how many."""
    stmt = (
        pal.update()
        .where(pal.c.account_id == account_id, pal.c.kind.in_(list(kinds)), pal.c.cleared_at.is_(None))
        .values(cleared_at=at)
        .returning(pal.c.id)
    )
    return len(conn.execute(stmt).all())


def open_alert_kinds(conn: Connection, account_id: int) -> set[str]:
    query = sa.select(pal.c.kind).where(pal.c.account_id == account_id, pal.c.cleared_at.is_(None))
    return set(conn.execute(query).scalars())


def alerts(
    conn: Connection, *, visible: ColumnElement[bool] | None = None, account_id: int | None = None,
    open_only: bool = False, limit: int = 100, before_id: int | None = None,
) -> list[Alert]:  # fmt: skip
    """Alerts, newest first."""
    query = sa.select(pal, pa.c.meter_id, pa.c.currency).join(pa, pa.c.id == pal.c.account_id)
    if account_id is not None:
        query = query.where(pal.c.account_id == account_id)
    if visible is not None:
        query = query.where(pa.c.meter_id.in_(sa.select(meters.c.id).where(visible)))
    if open_only:
        query = query.where(pal.c.cleared_at.is_(None))
    if before_id is not None:
        query = query.where(pal.c.id < before_id)
    return [_row(Alert, row) for row in conn.execute(query.order_by(pal.c.id.desc()).limit(limit))]
