"""Revenue protection's writing side, shared by the background monitor and the on-demand services.

- ``record_tamper_events``: a tamper event (cover opened, magnetic field, reverse energy, meter
  removed) opens an investigation case for its meter or adds to the one not yet closed; the same
  event delivered twice (the bus is at-least-once; a push and the event log carry the same event)
  is recorded once.
- ``run_scan``: the anomaly rules over meters and the energy balance of transformers with a check
  meter are evaluated on a read connection, then written in one short transaction: watch entries
  (refreshed, or cleared when a rule stops firing), balance rows, and cases for the rules in
  ``RevenueSettings.case_rules``. Every case change is audited (``cases.manage``) in its transaction.
- ``RevenueMonitor``: subscribes to ``METER_EVENTS`` (tamper) and ``READINGS_STORED`` (meters
  with new readings are scanned once collection has been quiet for ``scan_delay_s``).

This module does not import ``services.context`` so that the Platform can hold a monitor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from openami.bus import READINGS_STORED, Bus, Unsubscribe
from openami.bus.topics import METER_EVENTS
from openami.db import revenue as repo
from openami.db import tables as t
from openami.domain.messages import ReadingsStored
from openami.domain.meter_events import EventCategory, EventCode, MeterEvent, MeterEvents, category_of
from openami.errors import Conflict
from openami.security.audit import AuditEntry, record
from openami.services import revenue_rules as rules
from openami.settings import RevenueSettings

__all__ = [
    "ACTION_MANAGE",
    "ACTION_READ",
    "CASE_STATES",
    "OPENING_CODES",
    "TRANSITIONS",
    "IllegalTransition",
    "RevenueMonitor",
    "ScanSummary",
    "audit_case",
    "ensure_case",
    "record_tamper_events",
    "run_scan",
]

_log = structlog.get_logger("openami.services.revenue")

ACTION_MANAGE = "cases.manage"
ACTION_READ = "cases.read"
SYSTEM_ACTOR = "system:revenue"
CASE_STATES = ("open", "investigating", "confirmed-theft", "no-fault", "closed")
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"investigating"}),
    "investigating": frozenset({"confirmed-theft", "no-fault"}),
    "confirmed-theft": frozenset({"closed"}),
    "no-fault": frozenset({"closed"}),
    "closed": frozenset(),
}
OPENING_CODES = frozenset(
    {EventCode.COVER_OPENED, EventCode.MAGNETIC_FIELD, EventCode.REVERSE_ENERGY, EventCode.METER_REMOVED}
)
"""Tamper events that open a case; the other tamper events (cover closed) are only added to an open one."""
_TAMPER_WORDS = {
    EventCode.COVER_OPENED: "cover opened",
    EventCode.COVER_CLOSED: "cover closed",
    EventCode.MAGNETIC_FIELD: "magnetic field",
    EventCode.REVERSE_ENERGY: "reverse energy",
    EventCode.METER_REMOVED: "meter removed",
}


class IllegalTransition(Conflict):
    """A case state change the state machine does not allow."""

    code = "illegal-case-transition"


def audit_case(
    conn: Connection, actor: str, case: repo.CaseRow, what: str, *, now: datetime, **details: str | int | float | None
) -> None:
    """One ``cases.manage`` audit entry for a change of ``case``, in the caller's transaction."""
    subject = None
    if case.meter_id is not None:
        premise = repo.premises_of(conn, [case.meter_id]).get(case.meter_id)
        subject = None if premise is None else f"premise:{premise}"
    entry = AuditEntry(
        actor=actor, action=ACTION_MANAGE, outcome="ok", resource=f"case:{case.id}", subject=subject,
        purpose="investigation", details={"change": what, "state": case.state, **details},
    )  # fmt: skip
    record(conn, entry, now=now)


def ensure_case(
    conn: Connection,
    *,
    meter_id: int | None,
    transformer_id: str | None,
    reason: str,
    summary: str,
    actor: str,
    now: datetime,
) -> tuple[repo.CaseRow, bool]:
    """The meter's (or transformer's) case that is not closed, or a new one (audited); returns (case, new)."""
    found = (
        repo.open_case_for_meter(conn, meter_id)
        if meter_id is not None
        else repo.open_case_for_transformer(conn, str(transformer_id))
    )
    if found is not None:
        return found, False
    try:
        with conn.begin_nested():  # a concurrent opener wins the unique index: use its case
            case = repo.insert_case(
                conn, meter_id=meter_id, transformer_id=transformer_id, reason=reason, summary=summary, actor=actor,
                now=now,
            )  # fmt: skip
    except IntegrityError:
        found = (
            repo.open_case_for_meter(conn, meter_id)
            if meter_id is not None
            else repo.open_case_for_transformer(conn, str(transformer_id))
        )
        if found is None:
            raise Conflict("a case for this meter or transformer is already open") from None
        return found, False
    repo.add_history(conn, case.id, kind="opened", actor=actor, now=now, to_state="open", text=summary[:500])
    audit_case(conn, actor, case, "opened", now=now, reason=reason)
    return case, True


def _add_evidence(conn: Connection, case: repo.CaseRow, key: str, text: str, *, actor: str, now: datetime) -> bool:
    """Add a piece of evidence to a case once (keyed); audited. False when it was already there."""
    if repo.evidence_recorded(conn, case.id, key):
        return False
    repo.add_history(conn, case.id, kind="evidence", actor=actor, now=now, text=text[:500], evidence_key=key[:64])
    repo.update_case(conn, case.id, now=now)
    audit_case(conn, actor, case, "evidence", now=now, evidence=key[:64])
    return True


# --- tamper events --------------------------------------------------------------------------------


def _tamper(events: Iterable[MeterEvent]) -> list[MeterEvent]:
    return sorted(
        (e for e in events if category_of(e.code) is EventCategory.TAMPER), key=lambda e: (e.meter_id, e.meter_time)
    )


def record_tamper_events(engine: Engine, events: Iterable[MeterEvent], *, now: datetime) -> dict[str, int]:
    """Open or add to cases for the tamper events among ``events`` (one transaction); counts of what changed."""
    counts = {"opened": 0, "evidence": 0}
    tamper = _tamper(events)
    if not tamper:
        return counts
    with engine.begin() as conn:
        known = set(
            conn.execute(sa.select(t.meters.c.id).where(t.meters.c.id.in_({e.meter_id for e in tamper}))).scalars()
        )
        for event in tamper:
            if event.meter_id not in known:
                continue  # the head-end publishes registered meters only; never fail a batch over one
            counts_one = _record_one(conn, event, now=now)
            counts["opened"] += counts_one[0]
            counts["evidence"] += counts_one[1]
    return counts


def _record_one(conn: Connection, event: MeterEvent, *, now: datetime) -> tuple[int, int]:
    word = _TAMPER_WORDS.get(event.code, event.code.name.lower())
    at = datetime.fromtimestamp(event.meter_time, UTC).isoformat()
    key = f"event:{int(event.code)}@{event.meter_time}"
    if repo.evidence_seen_for_meter(conn, event.meter_id, key):
        return 0, 0  # a redelivery, possibly of an event whose case was closed since: not a new case
    opened = 0
    case = repo.open_case_for_meter(conn, event.meter_id)
    if case is None:
        if event.code not in OPENING_CODES:
            return 0, 0
        case, new = ensure_case(
            conn, meter_id=event.meter_id, transformer_id=None, reason="tamper", summary=f"tamper: {word} at {at}",
            actor=SYSTEM_ACTOR, now=now,
        )  # fmt: skip
        opened = int(new)
    added = _add_evidence(conn, case, key, f"{word} at {at} ({event.source})", actor=SYSTEM_ACTOR, now=now)
    return opened, int(added)


# --- scans ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ScanSummary:
    """What a scan found and changed."""

    meters: int = 0
    transformers: int = 0
    findings: dict[str, int] = field(default_factory=dict)  # rule → meters it fired for
    new_watch: int = 0
    cleared_watch: int = 0
    balances: list[rules.Balance] = field(default_factory=list)
    cases_opened: int = 0


def _all_meters(conn: Connection) -> list[int]:
    return [int(m) for m in conn.execute(sa.select(t.meters.c.id).order_by(t.meters.c.id)).scalars()]


def run_scan(
    engine: Engine,
    settings: RevenueSettings,
    *,
    meter_ids: Sequence[int] | None,
    actor: str,
    now: datetime,
    audit: Callable[[Connection, ScanSummary], None] | None = None,
) -> ScanSummary:
    """Evaluate the rules over ``meter_ids`` (None: every meter) and the balances of their transformers, then write.

    ``audit`` (when given) records the scan itself in the writing transaction.
    """
    with engine.connect() as conn:  # read first, without holding the write lock
        ids = _all_meters(conn) if meter_ids is None else sorted(set(meter_ids))
        checks = repo.check_meter_ids(conn)
        findings = rules.evaluate_rules(conn, [m for m in ids if m not in checks], settings, now)
        transformers = sorted(
            repo.check_meters(conn, None if meter_ids is None else sorted(repo.transformers_of(conn, ids)))
        )
        start, end = rules.balance_period(now, settings.balance_days)
        balances = [rules.compute_balance(conn, x, start, end, settings) for x in transformers]
    summary = ScanSummary(meters=len(ids), transformers=len(transformers), balances=balances)
    with engine.begin() as conn:
        _write_findings(conn, findings, ids, settings, summary, actor=actor, now=now)
        for balance in balances:
            _write_balance(conn, balance, settings, summary, actor=actor, now=now)
        if audit is not None:
            audit(conn, summary)
    return summary


def _write_findings(
    conn: Connection, findings: list[rules.Finding], ids: list[int], settings: RevenueSettings, summary: ScanSummary,
    *, actor: str, now: datetime,
) -> None:  # fmt: skip
    fired: dict[str, set[int]] = {rule: set() for rule in rules.RULES}
    for finding in findings:
        assert finding.meter_id is not None  # the per-meter rules always name a meter
        fired[finding.rule].add(finding.meter_id)
        _write_finding(conn, finding, settings, summary, actor=actor, now=now)
    for rule, meters in fired.items():
        summary.findings[rule] = len(meters)
        summary.cleared_watch += repo.clear_watch(conn, rule, ids, meters, now=now)


def _write_finding(
    conn: Connection,
    finding: rules.Finding,
    settings: RevenueSettings,
    summary: ScanSummary,
    *,
    actor: str,
    now: datetime,
) -> None:
    case_id = None
    if finding.rule in settings.case_rules:
        case, new = ensure_case(
            conn, meter_id=finding.meter_id, transformer_id=finding.transformer_id, reason=finding.rule,
            summary=finding.summary, actor=actor, now=now,
        )  # fmt: skip
        summary.cases_opened += int(new)
        _add_evidence(conn, case, f"rule:{finding.rule}", finding.summary, actor=actor, now=now)
        case_id = case.id
    _, new_entry = repo.upsert_watch(
        conn, meter_id=finding.meter_id, transformer_id=finding.transformer_id, rule=finding.rule,
        evidence=finding.evidence, now=now, case_id=case_id,
    )  # fmt: skip
    summary.new_watch += int(new_entry)


def _write_balance(
    conn: Connection,
    balance: rules.Balance,
    settings: RevenueSettings,
    summary: ScanSummary,
    *,
    actor: str,
    now: datetime,
) -> None:
    """Store the balance; a flagged one names the transformer and its suspects on the watch list."""
    values = {
        "transformer_id": balance.transformer_id, "check_meter_id": balance.check_meter_id,
        "period_start": balance.period_start, "period_end": balance.period_end, "intervals": balance.intervals,
        "meters": balance.meters, "check_wh": balance.check_wh, "meters_wh": balance.meters_wh,
        "loss_wh": balance.loss_wh, "loss_share": balance.loss_share, "tolerance": balance.tolerance,
        "flagged": balance.flagged, "suspects": [s.meter_id for s in balance.suspects], "computed_at": now,
    }  # fmt: skip
    repo.insert_balance(conn, values)
    if not balance.flagged:
        summary.cleared_watch += repo.clear_transformer_watch(
            conn, rules.ENERGY_BALANCE, balance.transformer_id, now=now
        )
        return
    share = balance.loss_share or 0.0
    text = f"transformer {balance.transformer_id}: {share:.1%} of {balance.check_wh:.0f} Wh unaccounted for"
    case_id = None
    if rules.ENERGY_BALANCE in settings.case_rules:
        case, new = ensure_case(
            conn, meter_id=None, transformer_id=balance.transformer_id, reason=rules.ENERGY_BALANCE, summary=text,
            actor=actor, now=now,
        )  # fmt: skip
        summary.cases_opened += int(new)
        suspects = ", ".join(str(s.meter_id) for s in balance.suspects) or "none"
        key = f"balance:{balance.period_end}"
        _add_evidence(conn, case, key, f"{text}; suspects: {suspects}", actor=actor, now=now)
        case_id = case.id
    evidence: dict[str, float | int] = {
        "loss_share": round(share, 4), "loss_wh": round(balance.loss_wh, 3),
        "check_wh": round(balance.check_wh, 3), "period_end": balance.period_end, "intervals": balance.intervals,
    }  # fmt: skip
    entries: list[tuple[int | None, dict[str, float | int]]] = [
        (s.meter_id, {**evidence, "drop_share": round(s.drop_share, 4)}) for s in balance.suspects
    ] or [(None, evidence)]
    for meter_id, detail in entries:
        _, new_entry = repo.upsert_watch(
            conn, meter_id=meter_id, transformer_id=balance.transformer_id, rule=rules.ENERGY_BALANCE,
            evidence=detail, now=now, case_id=case_id,
        )  # fmt: skip
        summary.new_watch += int(new_entry)


# --- the background monitor -----------------------------------------------------------------------


class RevenueMonitor:
    """Tamper events → cases at once; meters with new readings → a scan once collection is quiet."""

    def __init__(self, engine: Engine, bus: Bus, settings: RevenueSettings, *, now: Callable[[], datetime]) -> None:
        self.engine, self.bus, self.settings, self.now = engine, bus, settings, now
        self._unsubscribe: list[Unsubscribe] = []
        self._pending: set[int] = set()
        self._pending_since = 0.0  # loop time the oldest pending meter's readings were stored
        self._timer: asyncio.TimerHandle | None = None
        self._scan: asyncio.Task[None] | None = None
        self.scans = 0  # finished background scans (for tests and the status page)

    def start(self) -> None:
        self._unsubscribe = [
            self.bus.subscribe(METER_EVENTS, self.on_events),
            self.bus.subscribe(READINGS_STORED, self.on_stored),
        ]

    async def on_events(self, batch: MeterEvents) -> None:
        if any(category_of(e.code) is EventCategory.TAMPER for e in batch.events):
            counts = await asyncio.to_thread(record_tamper_events, self.engine, batch.events, now=self.now())
            if counts["opened"]:
                _log.info("revenue.cases.opened", count=counts["opened"], reason="tamper")

    async def on_stored(self, message: ReadingsStored) -> None:
        loop = asyncio.get_running_loop()
        if not self._pending:
            self._pending_since = loop.time()
        self._pending.add(message.meter_id)
        if self._timer is not None:
            self._timer.cancel()  # wait for collection to go quiet: one scan per run, not per meter ...
        # ... but a collection that never goes quiet (a large fleet) must not postpone the scan for ever
        deadline = self._pending_since + self.settings.scan_max_wait_s - loop.time()
        self._timer = loop.call_later(max(0.0, min(self.settings.scan_delay_s, deadline)), self._start_scan)

    def _start_scan(self) -> None:
        self._timer = None
        if self._scan is not None and not self._scan.done():
            self._timer = asyncio.get_running_loop().call_later(self.settings.scan_delay_s, self._start_scan)
            return
        meters, self._pending = sorted(self._pending), set()
        self._scan = asyncio.get_running_loop().create_task(self._run(meters))

    async def _run(self, meters: list[int]) -> None:
        try:
            summary = await asyncio.to_thread(
                run_scan, self.engine, self.settings, meter_ids=meters, actor=SYSTEM_ACTOR, now=self.now()
            )
            _log.info(
                "revenue.scan.done", meters=summary.meters, new_watch=summary.new_watch, cases=summary.cases_opened
            )
        except Exception:  # noqa: BLE001 - a failed background scan must not stop the next one
            _log.exception("revenue.scan.failed", meters=len(meters))
        finally:
            self.scans += 1

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._scan is not None:
            await asyncio.gather(self._scan, return_exceptions=True)
