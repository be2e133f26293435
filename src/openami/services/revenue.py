"""Revenue protection services (issue 6): investigation cases, the watch list, transformer energy balance,
anomaly scans and the premise flags the rules read. Every function is authorised (``cases.read`` to
see, ``cases.manage`` to change, ``premises.manage`` for premise flags) and every change is audited in
its own transaction. docs/revenue-protection.md describes the rules, thresholds and case states.

Case states: open → investigating → confirmed-theft | no-fault → closed; any other move is refused
(``IllegalTransition``, 409, the refusal audited as failed). Each change adds a history row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openami.db import meters as meter_repo
from openami.db import revenue as repo
from openami.db import tables as t
from openami.db.revenue import BalanceRow, CaseRow, HistoryRow, PremiseFlags, WatchRow
from openami.errors import InvalidInput, NotFound
from openami.security.audit import AuditEntry, record
from openami.security.policy import RequestScope, Resource, authorize
from openami.services import revenue_rules as rules
from openami.services.context import Platform
from openami.services.revenue_engine import (
    ACTION_MANAGE,
    ACTION_READ,
    CASE_STATES,
    TRANSITIONS,
    IllegalTransition,
    RevenueMonitor,
    ScanSummary,
    audit_case,
    ensure_case,
    run_scan,
)
from openami.services.revenue_rules import Balance, Finding

__all__ = [
    "CASE_STATES",
    "RULES",
    "TRANSITIONS",
    "Balance",
    "BalanceRow",
    "CaseDetail",
    "CaseRow",
    "Finding",
    "HistoryRow",
    "IllegalTransition",
    "PremiseFlags",
    "ScanSummary",
    "WatchRow",
    "add_note",
    "assign_case",
    "balance_history",
    "check_move",
    "energy_balance",
    "get_case",
    "list_cases",
    "move_case",
    "open_case",
    "scan",
    "set_premise_flags",
    "start",
    "stop",
    "watch_list",
]

RULES = (*rules.RULES, rules.ENERGY_BALANCE)
MAX_NOTE = 2000
MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class CaseDetail:
    case: CaseRow
    history: list[HistoryRow]


def _case_resource(case_id: int) -> Resource:
    return Resource("case", str(case_id))


def _existing(conn: Connection, case_id: int, *, for_update: bool = False) -> CaseRow:
    case = repo.get_case(conn, case_id, for_update=for_update)
    if case is None:
        raise NotFound(f"case {case_id} does not exist")
    return case


def _aware(moment: datetime | None, what: str) -> datetime | None:
    if moment is not None and moment.utcoffset() is None:
        raise InvalidInput(f"{what} needs a time zone (e.g. Z or +00:00)")
    return moment


def _text(value: str, what: str, limit: int) -> str:
    text = value.strip()
    if not text or len(text) > limit:
        raise InvalidInput(f"{what} must be 1 to {limit} characters")
    return text


# --- cases ----------------------------------------------------------------------------------------


def list_cases(  # noqa: PLR0913 - one keyword per filter
    platform: Platform,
    scope: RequestScope,
    *,
    state: str | None = None,
    meter_id: int | None = None,
    transformer_id: str | None = None,
    assignee: str | None = None,
    reason: str | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[CaseRow]:
    """Cases by id, filtered (keyset paging with ``after_id``)."""
    if state is not None and state not in CASE_STATES:
        raise InvalidInput(f"unknown case state {state[:32]!r}; one of {', '.join(CASE_STATES)}")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit must be 1 to {MAX_LIST}")
    with platform.engine.connect() as conn:
        authorize(conn, scope, ACTION_READ, now=platform.now())
        return repo.list_cases(
            conn, state=state, meter_id=meter_id, transformer_id=transformer_id, assignee=assignee, reason=reason,
            after_id=after_id, limit=limit,
        )  # fmt: skip


def get_case(platform: Platform, scope: RequestScope, case_id: int) -> CaseDetail:
    with platform.engine.connect() as conn:
        authorize(conn, scope, ACTION_READ, _case_resource(case_id), now=platform.now())
        return CaseDetail(_existing(conn, case_id), repo.list_history(conn, case_id))


def open_case(
    platform: Platform,
    scope: RequestScope,
    *,
    meter_id: int | None = None,
    transformer_id: str | None = None,
    summary: str,
) -> CaseDetail:
    """Open a case by hand for a meter or a transformer; Conflict when one is already open (use it instead)."""
    if (meter_id is None) == (transformer_id is None):
        raise InvalidInput("name exactly one of a meter or a transformer")
    text = _text(summary, "the summary", 255)
    now = platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION_MANAGE, now=now)
        if meter_id is not None:
            meter_repo.get_meter(conn, meter_id)  # NotFound
        else:
            meter_repo.transformer_area(conn, str(transformer_id))  # NotFound
        case, new = ensure_case(
            conn, meter_id=meter_id, transformer_id=transformer_id, reason="manual", summary=text,
            actor=scope.principal, now=now,
        )  # fmt: skip
        if not new:
            raise IllegalTransition(f"case {case.id} is already open for it")
        return CaseDetail(case, repo.list_history(conn, case.id))


def move_case(
    platform: Platform, scope: RequestScope, case_id: int, to_state: str, *, note: str | None = None
) -> CaseDetail:
    """Move a case to ``to_state`` if the state machine allows it (history row, audited)."""
    if to_state not in CASE_STATES:
        raise InvalidInput(f"unknown case state {to_state[:32]!r}; one of {', '.join(CASE_STATES)}")
    text = None if note is None else _text(note, "a note", MAX_NOTE)
    now = platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION_MANAGE, _case_resource(case_id), now=now)
        case = _existing(conn, case_id, for_update=True)
        if to_state not in TRANSITIONS[case.state]:
            allowed = ", ".join(sorted(TRANSITIONS[case.state])) or "none (closed)"
            refusal = IllegalTransition(f"case {case_id} cannot go from {case.state} to {to_state}; allowed: {allowed}")
            _audit_refusal(platform, scope, case, to_state, refusal.message)
            raise refusal
        closed = {"closed_at": now} if to_state == "closed" else {}
        repo.update_case(conn, case_id, now=now, state=to_state, **closed)
        repo.add_history(conn, case_id, kind="state", actor=scope.principal, now=now, from_state=case.state,
                         to_state=to_state, text=text)  # fmt: skip
        moved = _existing(conn, case_id)
        audit_case(conn, scope.principal, moved, "state", now=now, from_state=case.state)
        return CaseDetail(moved, repo.list_history(conn, case_id))


def _audit_refusal(platform: Platform, scope: RequestScope, case: CaseRow, to_state: str, reason: str) -> None:
    """A refused move is kept in the audit log although the request's transaction is rolled back."""
    with platform.engine.begin() as own:
        entry = AuditEntry(
            actor=scope.principal, action=ACTION_MANAGE, outcome="failed", resource=f"case:{case.id}",
            details={"change": "state", "state": case.state, "to_state": to_state, "reason": reason[:300]},
        )  # fmt: skip
        record(own, entry, now=platform.now())


def assign_case(platform: Platform, scope: RequestScope, case_id: int, assignee: str | None) -> CaseDetail:
    """Set (or with None clear) who investigates the case; a closed case cannot be assigned."""
    who = None if assignee is None else _text(assignee, "the assignee", 128)
    now = platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION_MANAGE, _case_resource(case_id), now=now)
        case = _existing(conn, case_id, for_update=True)
        if case.state == "closed":
            raise IllegalTransition(f"case {case_id} is closed")
        repo.update_case(conn, case_id, now=now, assignee=who)
        repo.add_history(conn, case_id, kind="assigned", actor=scope.principal, now=now, text=who)
        audit_case(conn, scope.principal, case, "assigned", now=now, assignee=who)
        return CaseDetail(_existing(conn, case_id), repo.list_history(conn, case_id))


def add_note(platform: Platform, scope: RequestScope, case_id: int, text: str) -> CaseDetail:
    """Add a note to a case (also a closed one: findings after closing are kept)."""
    note = _text(text, "a note", MAX_NOTE)
    now = platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION_MANAGE, _case_resource(case_id), now=now)
        case = _existing(conn, case_id, for_update=True)
        repo.add_history(conn, case_id, kind="note", actor=scope.principal, now=now, text=note)
        repo.update_case(conn, case_id, now=now)
        audit_case(conn, scope.principal, case, "note", now=now)
        return CaseDetail(_existing(conn, case_id), repo.list_history(conn, case_id))


# --- watch list, balances, scans ------------------------------------------------------------------


def watch_list(
    platform: Platform,
    scope: RequestScope,
    *,
    rule: str | None = None,
    meter_id: int | None = None,
    transformer_id: str | None = None,
    include_cleared: bool = False,
    limit: int = 500,
) -> list[WatchRow]:
    """Meters (and transformers) to be watched, newest first."""
    if rule is not None and rule not in RULES:
        raise InvalidInput(f"unknown rule {rule[:40]!r}; one of {', '.join(RULES)}")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit must be 1 to {MAX_LIST}")
    with platform.engine.connect() as conn:
        authorize(conn, scope, ACTION_READ, now=platform.now())
        return repo.list_watch(
            conn, rule=rule, meter_id=meter_id, transformer_id=transformer_id, include_cleared=include_cleared,
            limit=limit,
        )  # fmt: skip


def energy_balance(
    platform: Platform,
    scope: RequestScope,
    transformer_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Balance:
    """A transformer's balance over ``(start, end]`` (default: the configured last days), computed now, not stored."""
    settings = platform.settings.revenue
    now = platform.now()
    start, end = _aware(start, "start"), _aware(end, "end")
    first, last = rules.balance_period(end or now, settings.balance_days)
    if start is not None:
        first = int(start.timestamp())
    with platform.engine.begin() as conn:
        area = meter_repo.transformer_area(conn, transformer_id)  # NotFound
        authorize(conn, scope, ACTION_READ, Resource("transformer", transformer_id, area=area), now=now)
        balance = rules.compute_balance(conn, transformer_id, first, last, settings)
        # the suspects' consumption is personal data: who looked at it is kept, like any reading
        entry = AuditEntry(
            actor=scope.principal, action=ACTION_READ, outcome="ok", resource=f"transformer:{transformer_id}",
            purpose="investigation", details={"from": first, "to": last, "suspects": len(balance.suspects)},
        )  # fmt: skip
        record(conn, entry, now=now)
        return balance


def balance_history(
    platform: Platform, scope: RequestScope, transformer_id: str | None, *, limit: int = 50
) -> list[BalanceRow]:
    """Stored balances (by scans), newest first."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit must be 1 to {MAX_LIST}")
    with platform.engine.connect() as conn:
        authorize(conn, scope, ACTION_READ, now=platform.now())
        return repo.list_balances(conn, transformer_id, limit=limit)


def scan(platform: Platform, scope: RequestScope, *, meter_ids: Sequence[int] | None = None) -> ScanSummary:
    """Run the anomaly rules and the energy balances now (every meter when ``meter_ids`` is None); audited."""
    now = platform.now()
    with platform.engine.connect() as conn:
        authorize(conn, scope, ACTION_MANAGE, Resource("revenue", "scan"), now=now)
        if meter_ids is not None:
            ids = sorted(set(meter_ids))
            known: set[int] = set()
            for i in range(0, len(ids), 500):  # bounded IN lists (SQLite's variable limit)
                chunk = ids[i : i + 500]
                known.update(conn.execute(sa.select(t.meters.c.id).where(t.meters.c.id.in_(chunk))).scalars())
            if unknown := [m for m in ids if m not in known]:
                raise NotFound(f"unknown meter ids: {unknown[:5]}")

    def audit_scan(conn: Connection, summary: ScanSummary) -> None:
        details: dict[str, str | int] = {
            "change": "scan", "meters": summary.meters, "transformers": summary.transformers,
            "new_watch": summary.new_watch, "cleared_watch": summary.cleared_watch,
            "cases_opened": summary.cases_opened,
        }  # fmt: skip
        entry = AuditEntry(actor=scope.principal, action=ACTION_MANAGE, outcome="ok", resource="revenue:scan",
                           purpose="investigation", details=details)  # fmt: skip
        record(conn, entry, now=now)

    return run_scan(
        platform.engine,
        platform.settings.revenue,
        meter_ids=meter_ids,
        actor=scope.principal,
        now=now,
        audit=audit_scan,
    )


def check_move(
    platform: Platform, scope: RequestScope, meter_id: int, move_out: datetime, move_in: datetime
) -> Finding | None:
    """The register-mismatch rule for a given move-out and move-in; a mismatch goes on the watch list."""
    now = platform.now()
    settings = platform.settings.revenue
    _aware(move_out, "move_out")
    _aware(move_in, "move_in")
    with platform.engine.begin() as conn:
        authorize(conn, scope, ACTION_MANAGE, Resource("meter", str(meter_id)), now=now)
        meter_repo.get_meter(conn, meter_id)  # NotFound
        finding = rules.check_move(conn, meter_id, move_out, move_in, settings)
        if finding is not None:
            repo.upsert_watch(conn, meter_id=meter_id, transformer_id=None, rule=finding.rule,
                              evidence=finding.evidence, now=now)  # fmt: skip
            entry = AuditEntry(actor=scope.principal, action=ACTION_MANAGE, outcome="ok", resource=f"meter:{meter_id}",
                               purpose="investigation", details={"change": "watch", "rule": finding.rule})  # fmt: skip
            record(conn, entry, now=now)
        return finding


def set_premise_flags(
    platform: Platform,
    scope: RequestScope,
    premise_id: str,
    *,
    vacant: bool | None = None,
    has_generation: bool | None = None,
) -> PremiseFlags:
    """Flag a premise vacant (or occupied again) and/or as having registered generation; audited."""
    if vacant is None and has_generation is None:
        raise InvalidInput("give vacant and/or has_generation")
    now = platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, "premises.manage", Resource("premise", premise_id, premise=premise_id), now=now)
        if conn.execute(sa.select(t.premises.c.id).where(t.premises.c.id == premise_id)).first() is None:
            raise NotFound(f"premise {premise_id[:32]!r} does not exist")
        flags = repo.set_premise_flags(
            conn, premise_id, vacant=vacant, has_generation=has_generation, actor=scope.principal, now=now
        )
        entry = AuditEntry(
            actor=scope.principal, action="premises.manage", outcome="ok", resource=f"premise:{premise_id}",
            subject=f"premise:{premise_id}", details={"vacant": vacant, "has_generation": has_generation},
        )  # fmt: skip
        record(conn, entry, now=now)
        return flags


# --- platform lifecycle ---------------------------------------------------------------------------


def start(platform: Platform) -> None:
    """Start the background monitor (tamper events → cases; scans after collection) when enabled."""
    if platform.settings.revenue.enabled and platform.revenue is None:
        platform.revenue = RevenueMonitor(platform.engine, platform.bus, platform.settings.revenue, now=platform.now)
        platform.revenue.start()


async def stop(platform: Platform) -> None:
    if platform.revenue is not None:
        await platform.revenue.stop()
        platform.revenue = None
