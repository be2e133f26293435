"""Prepayment's system side: consumption debits from stored readings, standing charges, alerts, disconnect/reconnect.

The debits follow the MDM: every ``READINGS_STORED`` message names a meter and the interval ends just
written; for an enrolled meter the import intervals in that range are priced with the account's
tariff and posted as one "consumption" entry. ``prepay_debits`` remembers the reading version each
interval was priced at, so a re-delivered message debits nothing and a new version (an estimate
replaced by the actual value, a manual edit) posts a "correction" entry with the exact difference.

Every posting re-evaluates the credit state: crossing into "low" or "zero" raises an alert row
(audited); a balance back above the threshold clears them. The switch decision is taken after the
posting's transaction commits (``enforce``): zero credit outside friendly-credit hours submits a
disconnect through ``services.switch`` (workflow "prepay"), a top-up above the reconnect threshold a
reconnect. The submission's idempotency key names the account and its ledger position, so a retry
after a crash or a second evaluation of the same state never issues a second command.

``PrepayEngine`` runs this in the platform: the bus subscription, and a periodic check that posts
standing charges (one entry per completed UTC day) and re-evaluates zero-credit accounts whose
friendly hours have ended.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

import structlog
from sqlalchemy.engine import Connection

from openami.bus import READINGS_STORED, Bus, Unsubscribe
from openami.db import prepay as repo
from openami.db import readings as readings_repo
from openami.db.prepay import Account, Debit, Posting
from openami.domain.codes import ChannelCode
from openami.domain.messages import ReadingCounts, ReadingsStored
from openami.errors import InvalidInput, OpenAmiError
from openami.security import audit
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import disconnect_calendar
from openami.services.prepay_rules import (
    FriendlyHours,
    credit_state,
    decide_switch,
    energy_mwh,
    parse_money,
    price_energy,
)
from openami.settings import PrepaySettings, Settings
from openami.waiting import wait_until_set

__all__ = [
    "SYSTEM_ACTOR",
    "SYSTEM_SCOPE",
    "PrepayEngine",
    "SwitchLink",
    "debit_readings",
    "enforce",
    "evaluate_credit",
    "friendly_hours",
    "post_standing_charges",
    "switch_decision",
    "switch_link",
]

log = structlog.get_logger("openami.services.prepay")

SYSTEM_ACTOR = "system:prepay"
# billing_cis for the prepayment decision; ami_operator because services.switch authorises the command
# itself as switch.disconnect / switch.reconnect, which billing_cis is not granted (docs/security.md)
SYSTEM_SCOPE = RequestScope(
    principal=SYSTEM_ACTOR, roles=frozenset({Role.BILLING_CIS, Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES})
)
DAY_S = 86_400
_IMPORT = int(ChannelCode.ACTIVE_IMPORT)
_ALERT_KINDS = {"low": ("low-credit",), "zero": ("low-credit", "zero-credit")}  # open alerts per credit state


def friendly_hours(settings: PrepaySettings, text: str) -> FriendlyHours:
    """An account's friendly-credit hours, in the configured time zone with the configured holidays."""
    try:
        holidays = [date.fromisoformat(day) for day in settings.holidays]
    except ValueError:
        raise InvalidInput("prepay.holidays must be YYYY-MM-DD dates", code="invalid-hours") from None
    return FriendlyHours.parse(text, zone=settings.timezone, holidays=holidays)


def _audit(conn: Connection, action: str, account: Account, *, now: datetime, **details: Any) -> None:
    entry = audit.AuditEntry(
        SYSTEM_ACTOR, action, "ok", resource=f"prepay-account:{account.id}",
        subject=None if account.premise_id is None else f"premise:{account.premise_id}", purpose="billing",
        details=details,
    )  # fmt: skip
    audit.record(conn, entry, now=now)


def evaluate_credit(conn: Connection, account: Account, balance: int, *, actor: str, now: datetime) -> str:
    """Move the account's credit state to what ``balance`` means; raise or clear alerts on a change.

    Alerts fire on the crossing only (one low-credit alert however many debits follow it); zero credit
    keeps the low-credit alert open too. Returns the new credit state.
    """
    new = credit_state(balance, account.low_credit_threshold)
    if new == account.credit_state:
        return new
    repo.update_account(conn, account.id, credit_state=new)
    still_open = _ALERT_KINDS.get(new, ())
    cleared = repo.clear_alerts(
        conn, account.id, [k for k in ("low-credit", "zero-credit") if k not in still_open], at=now
    )
    already = repo.open_alert_kinds(conn, account.id)
    raised = [k for k in still_open if k not in already]
    for kind in raised:
        alert_id = repo.insert_alert(conn, account.id, kind, balance, at=now)
        entry = audit.AuditEntry(
            actor, "prepay.alert", "ok", resource=f"prepay-account:{account.id}",
            subject=None if account.premise_id is None else f"premise:{account.premise_id}", purpose="billing",
            details={"alert": alert_id, "kind": kind, "balance": balance, "meter": account.meter_id},
        )  # fmt: skip
        audit.record(conn, entry, now=now)
        log.info("prepay.alert", account=account.id, kind=kind)
    if cleared:
        log.info("prepay.alerts_cleared", account=account.id, cleared=cleared)
    return new


# --- consumption debits ----------------------------------------------------------------------------


def _price_intervals(
    conn: Connection, account: Account, start: int, end: int, price_per_kwh: int
) -> tuple[list[Debit], list[Debit], list[Debit]]:
    """(new debits, corrected debits, what the corrected ones were) for the import intervals in [start, end]."""
    done = repo.debits_between(conn, account.id, start, end)
    new: list[Debit] = []
    corrected: list[Debit] = []
    before: list[Debit] = []
    for record in readings_repo.read_intervals(conn, account.meter_id, start, end, _IMPORT):
        previous = done.get(record.interval_end)
        if previous is not None and previous.version == record.version:
            continue  # a re-delivered read: debited already
        price = price_per_kwh if previous is None else previous.price_per_kwh  # a correction keeps its price
        mwh = energy_mwh(record.value)
        debit = Debit(record.interval_end, record.version, mwh, price, price_energy(mwh, price))
        if previous is None:
            new.append(debit)
        else:
            corrected.append(debit)
            before.append(previous)
    return new, corrected, before


def debit_readings(conn: Connection, msg: ReadingsStored, *, now: datetime) -> tuple[Account, list[repo.Entry]] | None:
    """Debit the import intervals of one stored read (no commit); None when the meter is not enrolled.

    Returns the account (as locked, before the postings) and the entries posted.
    """
    if msg.last_interval_end <= 0:
        return None
    found = repo.get_account(conn, meter_id=msg.meter_id)
    if found is None:
        return None
    account = repo.lock_account(conn, found.id, now=now)
    start = max(msg.first_interval_end, account.debit_from + 1)
    if start > msg.last_interval_end:
        return None
    tariff = repo.get_tariff(conn, account.tariff_id)
    new, corrected, before = _price_intervals(conn, account, start, msg.last_interval_end, tariff.price_per_kwh)
    entries: list[repo.Entry] = []
    if new:
        ends = [d.interval_end for d in new]
        posting = Posting(
            "consumption", -sum(d.amount for d in new), f"{len(new)} intervals at {tariff.code}"[:128],
            energy_mwh=sum(d.energy_mwh for d in new), period=(min(ends), max(ends)),
        )  # fmt: skip
        entries.append(repo.post(conn, account.id, posting, actor=SYSTEM_ACTOR, at=now))
        repo.write_debits(conn, account.id, entries[-1].id, new)
        repo.update_account(conn, account.id, debited_through=max(account.debited_through, *ends))
    if corrected:
        entries.append(_post_correction(conn, account, corrected, before, now=now))
    if entries:
        _audit(conn, "prepay.debit", account, now=now, meter=account.meter_id, intervals=len(new),
               corrected=len(corrected), amount=sum(e.amount for e in entries))  # fmt: skip
        evaluate_credit(conn, account, entries[-1].balance_after, actor=SYSTEM_ACTOR, now=now)
    return account, entries


def _post_correction(
    conn: Connection, account: Account, corrected: list[Debit], before: list[Debit], *, now: datetime
) -> repo.Entry:
    """One entry for re-versioned intervals: the exact difference of what they cost then and now."""
    ends = [d.interval_end for d in corrected]
    amount = sum(d.amount for d in before) - sum(d.amount for d in corrected)
    energy = sum(d.energy_mwh for d in corrected) - sum(d.energy_mwh for d in before)
    posting = Posting(
        "correction", amount, f"{len(corrected)} intervals re-read (new versions)", energy_mwh=energy,
        period=(min(ends), max(ends)),
    )  # fmt: skip
    entry = repo.post(conn, account.id, posting, actor=SYSTEM_ACTOR, at=now)
    repo.write_debits(conn, account.id, entry.id, corrected)
    return entry


# --- standing charges ------------------------------------------------------------------------------


def post_standing_charges(conn: Connection, account_id: int, *, now: datetime) -> list[repo.Entry]:
    """Post the standing charge of every completed UTC day not charged yet (no commit).

    The enrolment day is free: ``standing_through`` starts at the next UTC midnight.
    """
    account = repo.lock_account(conn, account_id, now=now)
    today = int(now.timestamp()) // DAY_S * DAY_S
    if account.standing_through >= today:
        return []
    tariff = repo.get_tariff(conn, account.tariff_id)
    if tariff.standing_charge_per_day == 0:  # nothing to charge: no entries of zero
        repo.update_account(conn, account.id, standing_through=today)
        return []
    entries = []
    for day in range(account.standing_through, today, DAY_S):
        posting = Posting(
            "standing-charge", -tariff.standing_charge_per_day, f"standing charge {tariff.code}",
            period=(day, day + DAY_S),
        )  # fmt: skip
        entries.append(repo.post(conn, account.id, posting, actor=SYSTEM_ACTOR, at=now))
    repo.update_account(conn, account.id, standing_through=today)
    _audit(conn, "prepay.standing-charge", account, now=now, days=len(entries), amount=sum(e.amount for e in entries))
    evaluate_credit(conn, account, entries[-1].balance_after, actor=SYSTEM_ACTOR, now=now)
    return entries


# --- disconnect and reconnect ----------------------------------------------------------------------


def switch_decision(settings: PrepaySettings, account: Account, now: datetime) -> str | None:
    """The switch decision ("disconnect", "reconnect" or None) for the account as stored."""
    return decide_switch(
        balance=account.balance,
        state=account.state,
        entries=account.entries,
        in_friendly_hours=friendly_hours(settings, account.friendly_hours).contains(now),
        reconnect_threshold=parse_money(settings.reconnect_threshold, account.currency, places=6),
    )


def _settle_failed_disconnect(engine: Any, account: Account, link: SwitchLink, *, now: datetime) -> Account:
    if account.state != "disconnected" or account.last_command_id is None:
        return account
    if not link.never_opened(account.last_command_id):
        return account
    with engine.begin() as conn:
        repo.update_account(conn, account.id, state="connected", updated_at=now)
        _audit(conn, "prepay.disconnect-failed", account, now=now, command=account.last_command_id)
    log.warning("prepay.disconnect_failed", account=account.id, command=account.last_command_id)
    return replace(account, state="connected")


def _held_back(engine: Any, account: Account, now: datetime, timezone: str) -> str | None:
    """Why a zero-credit disconnect must wait although friendly hours are over: a critical-care premise
    (never disconnected for non-payment) or the disconnect calendar (no-disconnect hours, holidays,
    weather moratoria of ``services.disconnect_calendar``). None: it may go ahead."""
    with engine.connect() as conn:
        area, critical_care = repo.meter_care(conn, account.meter_id)
        if critical_care:
            return "held back: the premise is flagged critical care"
        calendar = disconnect_calendar.entries(conn)
    tz = disconnect_calendar.zone(timezone)
    reason = disconnect_calendar.refusal(calendar, now, area, tz)
    return None if reason is None else f"held back: {reason}"[:255]


@dataclass(frozen=True, slots=True)
class SwitchLink:
    """How prepayment reaches the switch service (``switch_link``; tests may pass their own).

    ``submit(account, "disconnect" | "reconnect", idempotency key)`` returns the command's id and
    raises OpenAmiError when refused; a reconnect may instead cancel the account's disconnect that was
    not sent yet (and return its id). ``never_opened(command_id)`` is True when that disconnect ended
    without opening the switch (failed, expired, cancelled): the supply is still on.
    """

    submit: Callable[[Account, str, str], int]
    never_opened: Callable[[int], bool]


def enforce(engine: Any, settings: Settings, account_id: int, link: SwitchLink | None, *, now: datetime) -> str | None:
    """Take the switch decision for one account and carry it out; returns the decision (None: nothing to do).

    ``link`` reaches the switch service (None: not available, the decision is only returned). The
    account's supply state changes only once the command is accepted; a disconnect that ended without
    opening the switch (the meter was offline until the command expired) puts it back to "connected",
    so that the next decision disconnects again.
    """
    with engine.connect() as conn:
        account = repo.get_account(conn, account_id)
    if account is None:
        return None
    if link is not None:
        account = _settle_failed_disconnect(engine, account, link, now=now)
    decision = switch_decision(settings.prepay, account, now)
    if decision is None or link is None:
        return decision
    held = _held_back(engine, account, now, settings.guard.timezone) if decision == "disconnect" else None
    if held is not None:
        if account.last_switch_error != held:
            with engine.begin() as conn:
                repo.update_account(conn, account.id, last_switch_error=held)
                _audit(conn, "prepay.disconnect-held", account, now=now, reason=held[:200])
        return None
    # the same decision on the same ledger position and last command is the same submission (idempotent)
    key = f"prepay:{account.id}:{decision}:{account.entries}:{account.last_command_id or 0}"
    try:
        command_id = link.submit(account, decision, key)
    except OpenAmiError as exc:
        with engine.begin() as conn:
            repo.update_account(conn, account.id, last_switch_error=f"{decision}: {exc.message}"[:255])
            entry = audit.AuditEntry(
                SYSTEM_ACTOR, f"prepay.{decision}", "failed", resource=f"prepay-account:{account.id}",
                purpose="billing", details={"meter": account.meter_id, "error": exc.code},
            )  # fmt: skip
            audit.record(conn, entry, now=now)
        log.warning("prepay.switch_refused", account=account.id, decision=decision, error=exc.code)
        return decision
    with engine.begin() as conn:
        state = "disconnected" if decision == "disconnect" else "connected"
        repo.update_account(
            conn, account.id, state=state, last_command_id=command_id, last_switch_error=None, updated_at=now
        )
        _audit(conn, f"prepay.{decision}", account, now=now, command=command_id, balance=account.balance)
    log.info("prepay.switch", account=account.id, decision=decision, command=command_id)
    return decision


class PrepayEngine:
    """The platform's prepayment part: debits on ``READINGS_STORED``, and the periodic check."""

    def __init__(
        self, engine: Any, settings: Settings, *, switch: SwitchLink | None, now: Callable[[], datetime]
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.switch = switch
        self.now = now
        self._unsubscribe: Unsubscribe | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._enrolled: set[int] = set()

    def subscribe(self, bus: Bus) -> None:
        with self.engine.connect() as conn:
            self._enrolled = repo.enrolled_meters(conn)
        self._unsubscribe = bus.subscribe(READINGS_STORED, self.handle)

    def enrolled(self, meter_id: int) -> None:
        """A meter enrolled in this process: debit its reads from now on (others: after the next check)."""
        self._enrolled.add(meter_id)

    async def handle(self, msg: ReadingsStored) -> None:
        """Debit one stored read, then take the switch decision (never raises: the bus must go on).

        Reads of meters not enrolled (most of a fleet) return at once, without a query: the bus applies
        backpressure, so a slow handler would slow the collection. A meter enrolled by another process
        is picked up by the next periodic check, which also debits what it missed until then.
        """
        if msg.meter_id not in self._enrolled:
            return
        try:
            account_id = await asyncio.to_thread(self._debit, msg)
            if account_id is not None:
                await asyncio.to_thread(self.enforce, account_id)
        except Exception:  # a bus handler boundary: log, the periodic check re-evaluates
            log.exception("prepay.debit_failed", meter_id=msg.meter_id)

    def _debit(self, msg: ReadingsStored) -> int | None:
        with self.engine.begin() as conn:
            done = debit_readings(conn, msg, now=self.now())
        return None if done is None or not done[1] else done[0].id

    def enforce(self, account_id: int) -> str | None:
        return enforce(self.engine, self.settings, account_id, self.switch, now=self.now())

    def check(self) -> int:
        """Standing charges for every account, then the switch decision for every account that may need one.

        Returns how many commands were decided.
        """
        with self.engine.connect() as conn:
            self._enrolled = repo.enrolled_meters(conn)
        after = 0
        decided = 0
        while True:
            with self.engine.connect() as conn:
                batch = repo.accounts(conn, limit=500, after_id=after)
            if not batch:
                return decided
            for account in batch:  # one transaction per account: a long check never holds many locks
                if self._stopping:
                    return decided
                if self._due(account):
                    with self.engine.begin() as conn:
                        post_standing_charges(conn, account.id, now=self.now())
                        self._catch_up(conn, account)
                decided += self.enforce(account.id) is not None
            after = batch[-1].id

    def _due(self, account: Account) -> bool:
        """Whether a standing charge is due or intervals after the high-water mark wait (read only)."""
        now = int(self.now().timestamp())
        if account.standing_through < now - now % DAY_S:
            return True
        with self.engine.connect() as conn:
            waiting = readings_repo.read_intervals(conn, account.meter_id, account.debited_through + 1, now, _IMPORT)
        return bool(waiting)

    def _catch_up(self, conn: Connection, account: Account) -> None:
        """Debit intervals after the high-water mark that no message announced (one lost at a shutdown)."""
        now = int(self.now().timestamp())
        if now > account.debited_through:
            debit_readings(conn, ReadingsStored(account.meter_id, ReadingCounts(), account.debited_through + 1, now),
                           now=self.now())  # fmt: skip

    def start(self) -> None:
        """Start the periodic check in the running loop."""
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a loop boundary: log and try again next period
                log.exception("prepay.check_failed")
            await wait_until_set(self._wake, self.settings.prepay.check_interval_s)

    async def stop(self) -> None:
        """Unsubscribe, then let a check in progress finish its account (its thread cannot be cancelled)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None


def switch_link(platform: Any) -> SwitchLink | None:
    """The ``SwitchLink`` through ``services.switch`` as ``system:prepay`` (workflow "prepay"), or None
    when this build has no switch service."""
    try:
        switch = importlib.import_module("openami.services.switch")
    except ModuleNotFoundError as exc:
        if exc.name != "openami.services.switch":
            raise
        return None
    settings: PrepaySettings = platform.settings.prepay
    reconnect = "reconnect-arm" if settings.reconnect_mode == "armed" else "reconnect"

    def cancel_unsent_disconnect(account: Account) -> int | None:
        """A top-up before the disconnect reached the meter: cancel it (the switch never opened)."""
        if account.last_command_id is None:
            return None
        last = switch.get_command(platform, SYSTEM_SCOPE, account.last_command_id)
        if last.command != "disconnect" or last.status not in ("awaiting-approval", "queued"):
            return None
        switch.cancel_command(platform, SYSTEM_SCOPE, last.id, reason="prepayment: credit restored before it was sent")
        return int(last.id)

    def submit(account: Account, decision: str, key: str) -> int:
        if decision == "reconnect" and (cancelled := cancel_unsent_disconnect(account)) is not None:
            return cancelled
        command = "disconnect" if decision == "disconnect" else reconnect
        reason = "prepayment: credit exhausted" if decision == "disconnect" else "prepayment: credit restored"
        request = switch.CommandRequest(
            meter_id=account.meter_id, command=command, execute_at=None, valid_for_s=settings.command_valid_for_s,
            limit=None, reason=reason, priority=0, purpose="billing", batch_id=None, workflow="prepay",
        )  # fmt: skip
        view = switch.submit(platform, SYSTEM_SCOPE, request, idempotency_key=key)
        return int(view.id)

    def never_opened(command_id: int) -> bool:
        view = switch.get_command(platform, SYSTEM_SCOPE, command_id)
        return bool(view.command == "disconnect" and view.status in ("failed", "expired", "cancelled"))

    return SwitchLink(submit, never_opened)
