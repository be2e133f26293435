"""Prepayment reconciliation: the energy the ledger debited against the meter's own import register.

For each account, the first and last import-register snapshots (1.0.1.8.0.255) inside the period give
the energy the meter counted; the debited intervals ending between the two snapshots (aligned down to
interval ends) give what the ledger charged for. A difference beyond the tolerance (Wh) means energy
was missed or charged twice: readings lost, a gap never filled, a debit posted for the wrong meter.
The snapshots are taken at read time, inside an interval, so up to one partial interval at each end
is expected; the tolerance covers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from openami.db import prepay as repo
from openami.errors import InvalidInput
from openami.security import audit
from openami.security.policy import RequestScope, authorize, visible_meters
from openami.services.context import Platform

__all__ = ["IMPORT_REGISTER", "Reconciliation", "reconcile"]

IMPORT_REGISTER = "1.0.1.8.0.255"
INTERVAL_S = 900
MAX_ACCOUNTS = 10_000
_TO_WH = {"Wh": 1.0, "kWh": 1_000.0, "MWh": 1_000_000.0}


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """One account's comparison; ``status`` "ok", "difference" or "no-registers" (fewer than two snapshots)."""

    account_id: int
    meter_id: int
    status: str
    register_from: datetime | None
    register_to: datetime | None
    register_wh: float | None  # energy the import register advanced by
    debited_wh: float | None  # energy of the intervals the ledger debited in between
    difference_wh: float | None  # register minus debited
    intervals: int


def _one(conn: Connection, account: repo.Account, start: int, end: int, tolerance_wh: float) -> Reconciliation:
    snapshots = repo.register_values(conn, account.meter_id, IMPORT_REGISTER, max(start, account.debit_from), end)
    usable = [(at, value * _TO_WH[unit]) for at, value, unit in snapshots if unit in _TO_WH]
    if len(usable) < 2:
        return Reconciliation(account.id, account.meter_id, "no-registers", None, None, None, None, None, 0)
    (first_at, first_wh), (last_at, last_wh) = usable[0], usable[-1]
    after, through = first_at - first_at % INTERVAL_S, last_at - last_at % INTERVAL_S
    debited_mwh, intervals = repo.debited_energy(conn, account.id, after, through)
    register_wh = last_wh - first_wh
    difference = register_wh - debited_mwh / 1000
    return Reconciliation(
        account.id, account.meter_id, "ok" if abs(difference) <= tolerance_wh else "difference",
        datetime.fromtimestamp(first_at, UTC), datetime.fromtimestamp(last_at, UTC), round(register_wh, 3),
        debited_mwh / 1000, round(difference, 3), intervals,
    )  # fmt: skip


def reconcile(  # noqa: PLR0913 - the period and what to compare, then who asks and when
    platform: Platform, scope: RequestScope, start: datetime, end: datetime, *, account_id: int | None = None,
    tolerance_wh: float | None = None, only_differences: bool = False, now: datetime | None = None,
) -> list[Reconciliation]:  # fmt: skip
    """Compare debited energy with register advance for the accounts the scope may read (or one of them)."""
    now = now or platform.now()
    if start.utcoffset() is None or end.utcoffset() is None or end <= start:
        raise InvalidInput("give an aware period with 'from' before 'to'")
    tolerance = platform.settings.prepay.reconcile_tolerance_wh if tolerance_wh is None else tolerance_wh
    if tolerance < 0:
        raise InvalidInput("the tolerance cannot be negative")
    first, last = int(start.timestamp()), int(end.timestamp())
    with platform.engine.begin() as conn:
        authorize(conn, scope, "prepay.read", purpose="billing", now=now)
        visible = visible_meters(scope, "prepay.read", "billing")
        if account_id is not None:
            found = repo.get_account(conn, account_id, visible=visible)
            accounts = [] if found is None else [found]
        else:
            accounts = repo.accounts(conn, visible=visible, limit=MAX_ACCOUNTS)
        rows = [_one(conn, a, first, last, tolerance) for a in accounts]
        differences = sum(r.status == "difference" for r in rows)
        entry = audit.AuditEntry(
            scope.principal, "prepay.read", "ok", resource="prepay-reconciliation", purpose="billing",
            details={"from": first, "to": last, "accounts": len(rows), "differences": differences},
        )  # fmt: skip
        audit.record(conn, entry, now=now)
    return [r for r in rows if r.status == "difference"] if only_differences else rows
