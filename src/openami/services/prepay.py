"""Prepayment services: tariffs, enrolment, payments, adjustments, balance and ledger, alerts, reconciliation.

Every function is authorised (``tariffs.manage``, ``prepay.manage``, ``prepay.payment``,
``prepay.adjust``, ``prepay.read``) and audited in the transaction of its change. ``prepay.read`` is
row-scoped: a customer sees only accounts of meters at their own premises (``visible_meters``); an
account outside the scope is NotFound, like an unknown one. Money crosses this boundary as decimal
strings in the account's currency; a payment in another currency, or of zero or a negative amount,
is refused with nothing written. A payment with an idempotency key already used on the account
returns the entry recorded the first time (a different amount under the same key is a Conflict).

After a payment or an adjustment commits, the switch decision is taken (``prepay_engine.enforce``):
a balance back above the reconnect threshold reconnects a disconnected supply, an adjustment to zero
may disconnect. The system side (debits, standing charges, the periodic check) is ``prepay_engine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.engine import Connection

from openami.db import prepay as repo
from openami.errors import Conflict, InvalidInput, NotFound
from openami.security import audit
from openami.security.policy import RequestScope, Resource, authorize, visible_meters
from openami.services import prepay_engine
from openami.services.context import Platform
from openami.services.prepay_engine import DAY_S
from openami.services.prepay_rules import format_money, parse_money

__all__ = [
    "AccountView",
    "AlertView",
    "EntryView",
    "PaymentResult",
    "TariffView",
    "adjust",
    "define_tariff",
    "enrol",
    "get_account",
    "get_ledger",
    "list_accounts",
    "list_alerts",
    "list_tariffs",
    "record_payment",
    "start",
    "stop",
    "update_account",
]

MAX_PAGE = 500
INTERVAL_S = 900


@dataclass(frozen=True, slots=True)
class TariffView:
    id: int
    code: str
    name: str
    currency: str
    price_per_kwh: str  # decimal string, major units
    standing_charge_per_day: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AccountView:
    id: int
    meter_id: int
    premise_id: str | None
    currency: str
    tariff_code: str
    balance: str
    low_credit_threshold: str
    friendly_hours: str
    state: str
    credit_state: str
    debited_through: datetime | None
    last_command_id: int | None
    last_switch_error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EntryView:
    seq: int
    kind: str
    amount: str
    balance_after: str
    energy_kwh: str | None
    period_start: datetime | None
    period_end: datetime | None
    reference: str
    actor: str
    at: datetime


@dataclass(frozen=True, slots=True)
class AlertView:
    id: int
    account_id: int
    meter_id: int
    kind: str
    balance: str
    currency: str
    raised_at: datetime
    cleared_at: datetime | None


@dataclass(frozen=True, slots=True)
class PaymentResult:
    entry: EntryView
    account: AccountView
    duplicate: bool  # the idempotency key was used before: nothing new was recorded
    switch: str | None  # "reconnect" when the top-up reconnects the supply


def _time(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _tariff_view(t: repo.Tariff) -> TariffView:
    return TariffView(
        t.id, t.code, t.name, t.currency, format_money(t.price_per_kwh, t.currency),
        format_money(t.standing_charge_per_day, t.currency), t.created_at,
    )  # fmt: skip


def _account_view(conn: Connection, a: repo.Account) -> AccountView:
    tariff = repo.get_tariff(conn, a.tariff_id)
    return AccountView(
        a.id, a.meter_id, a.premise_id, a.currency, tariff.code, format_money(a.balance, a.currency),
        format_money(a.low_credit_threshold, a.currency), a.friendly_hours, a.state, a.credit_state,
        _time(a.debited_through) if a.debited_through > a.debit_from else None, a.last_command_id,
        a.last_switch_error, a.created_at,
    )  # fmt: skip


def _entry_view(e: repo.Entry, currency: str) -> EntryView:
    energy = None if e.energy_mwh is None else str(Decimal(e.energy_mwh).scaleb(-6).normalize())
    return EntryView(
        e.seq, e.kind, format_money(e.amount, currency), format_money(e.balance_after, currency), energy,
        _time(e.period_start), _time(e.period_end), e.reference, e.actor, e.at,
    )  # fmt: skip


def _subject(account: repo.Account) -> str | None:
    return None if account.premise_id is None else f"premise:{account.premise_id}"


def _record(conn: Connection, scope: RequestScope, action: str, account: repo.Account, *, now: datetime,
            **details: str | int | None) -> None:  # fmt: skip
    entry = audit.AuditEntry(
        scope.principal, action, "ok", resource=f"prepay-account:{account.id}", subject=_subject(account),
        purpose="billing", details={"meter": account.meter_id, **details},
    )  # fmt: skip
    audit.record(conn, entry, now=now)


# --- tariffs ---------------------------------------------------------------------------------------


def define_tariff(  # noqa: PLR0913 - the tariff's fields, then who asks and when
    platform: Platform, scope: RequestScope, *, code: str, name: str, currency: str,
    price_per_kwh: str | Decimal, standing_charge_per_day: str | Decimal, now: datetime | None = None,
) -> TariffView:  # fmt: skip
    """Define a tariff (immutable: a new price is a new tariff). Prices have up to 6 decimal places."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, "tariffs.manage", Resource("tariff", code[:32]), purpose="billing", now=now)
        price = parse_money(price_per_kwh, currency, places=6)
        standing = parse_money(standing_charge_per_day, currency, places=6)
        if price < 0 or standing < 0:
            raise InvalidInput("prices cannot be negative", code="invalid-amount")
        values = {"code": code, "name": name, "currency": currency, "price_per_kwh": price,
                  "standing_charge_per_day": standing, "created_by": scope.principal, "created_at": now}  # fmt: skip
        tariff_id = repo.insert_tariff(conn, values)
        details: dict[str, str | int] = {
            "currency": currency,
            "price_per_kwh": price,
            "standing_charge_per_day": standing,
        }
        entry = audit.AuditEntry(scope.principal, "tariffs.manage", "ok", resource=f"tariff:{code}", details=details)
        audit.record(conn, entry, now=now)
        return _tariff_view(repo.get_tariff(conn, tariff_id))


def list_tariffs(platform: Platform, scope: RequestScope, *, now: datetime | None = None) -> list[TariffView]:
    """Every tariff (prices are not personal data; anyone who may read an account may see them)."""
    now = now or platform.now()
    with platform.engine.connect() as conn:
        authorize(conn, scope, "prepay.read", purpose="billing", now=now)
        return [_tariff_view(t) for t in repo.tariffs(conn)]


# --- accounts --------------------------------------------------------------------------------------


def enrol(
    platform: Platform, scope: RequestScope, *, meter_id: int, tariff_code: str,
    low_credit_threshold: str | Decimal | None = None, friendly_hours: str | None = None,
    now: datetime | None = None,
) -> AccountView:  # fmt: skip
    """Enrol a meter in prepayment: balance zero, supply connected, debits from the next interval on.

    The currency is the tariff's. Standing charges start with the next UTC day. Raises NotFound (meter,
    tariff), Conflict (already enrolled), InvalidInput (threshold, friendly hours).
    """
    now = now or platform.now()
    settings = platform.settings.prepay
    with platform.engine.begin() as conn:
        authorize(conn, scope, "prepay.manage", Resource("meter", str(meter_id)), purpose="billing", now=now)
        exists, premise = repo.meter_premise(conn, meter_id)
        if not exists:
            raise NotFound(f"no meter {meter_id}")
        tariff = repo.get_tariff(conn, code=tariff_code)
        threshold = settings.default_low_credit if low_credit_threshold is None else low_credit_threshold
        low = parse_money(threshold, tariff.currency, places=6)
        if low < 0:
            raise InvalidInput("the low-credit threshold cannot be negative", code="invalid-amount")
        wanted = settings.friendly_hours if friendly_hours is None else friendly_hours  # "": none at all
        hours = prepay_engine.friendly_hours(settings, wanted).text
        epoch = int(now.timestamp())
        values = {
            "meter_id": meter_id, "premise_id": premise, "currency": tariff.currency, "tariff_id": tariff.id,
            "low_credit_threshold": low, "friendly_hours": hours, "state": "connected", "credit_state": "zero",
            "balance": 0, "entries": 0, "debit_from": epoch - epoch % INTERVAL_S,
            "debited_through": epoch - epoch % INTERVAL_S, "standing_through": epoch - epoch % DAY_S + DAY_S,
            "created_at": now, "updated_at": now,
        }  # fmt: skip
        account_id = repo.insert_account(conn, values)
        account = repo.get_account(conn, account_id)
        assert account is not None
        _record(conn, scope, "prepay.manage", account, now=now, tariff=tariff.code, operation="enrol")
        view = _account_view(conn, account)
    if platform.prepay is not None:
        platform.prepay.enrolled(meter_id)
    return view


def update_account(
    platform: Platform, scope: RequestScope, account_id: int, *, tariff_code: str | None = None,
    low_credit_threshold: str | Decimal | None = None, friendly_hours: str | None = None,
    now: datetime | None = None,
) -> AccountView:  # fmt: skip
    """Change an account's tariff (same currency), low-credit threshold or friendly-credit hours."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, "prepay.manage", Resource("prepay-account", str(account_id)), purpose="billing", now=now)
        account = repo.lock_account(conn, account_id, now=now)
        changes: dict[str, object] = {}
        if tariff_code is not None:
            tariff = repo.get_tariff(conn, code=tariff_code)
            if tariff.currency != account.currency:
                raise InvalidInput(f"the account is in {account.currency}, tariff {tariff.code} in {tariff.currency}",
                                   code="wrong-currency")  # fmt: skip
            changes["tariff_id"] = tariff.id
        if low_credit_threshold is not None:
            changes["low_credit_threshold"] = parse_money(low_credit_threshold, account.currency, places=6)
        if friendly_hours is not None:
            changes["friendly_hours"] = prepay_engine.friendly_hours(platform.settings.prepay, friendly_hours).text
        repo.update_account(conn, account_id, **changes)
        _record(conn, scope, "prepay.manage", account, now=now, operation="update", changed=",".join(sorted(changes)))
        updated = repo.get_account(conn, account_id)
        assert updated is not None
        prepay_engine.evaluate_credit(conn, updated, updated.balance, actor=scope.principal, now=now)
        return _account_view(conn, repo.get_account(conn, account_id) or updated)


def _visible_account(conn: Connection, scope: RequestScope, account_id: int, *, now: datetime) -> repo.Account:
    authorize(conn, scope, "prepay.read", purpose="billing", now=now)
    account = repo.get_account(conn, account_id, visible=visible_meters(scope, "prepay.read", "billing"))
    if account is None:
        raise NotFound(f"no prepayment account {account_id}")
    return account


def get_account(
    platform: Platform, scope: RequestScope, account_id: int, *, now: datetime | None = None
) -> AccountView:
    """One account with its balance (personal data: the read is audited)."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        account = _visible_account(conn, scope, account_id, now=now)
        _record(conn, scope, "prepay.read", account, now=now, read="account")
        return _account_view(conn, account)


def list_accounts(  # noqa: PLR0913 - filters and paging, then who asks and when
    platform: Platform, scope: RequestScope, *, state: str | None = None, credit_state: str | None = None,
    meter_id: int | None = None, limit: int = 100, after_id: int = 0, now: datetime | None = None,
) -> list[AccountView]:  # fmt: skip
    """Accounts the scope may see, by id (``after_id`` pages on)."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, "prepay.read", purpose="billing", now=now)
        visible = visible_meters(scope, "prepay.read", "billing")
        if meter_id is not None:
            found = repo.get_account(conn, meter_id=meter_id, visible=visible)
            rows = [] if found is None else [found]
        else:
            rows = repo.accounts(
                conn, visible=visible, states=[state] if state else [], credit_states=[credit_state] if credit_state
                else [], limit=min(max(limit, 1), MAX_PAGE), after_id=after_id,
            )  # fmt: skip
        entry = audit.AuditEntry(scope.principal, "prepay.read", "ok", resource="prepay-accounts", purpose="billing",
                                 details={"accounts": len(rows)})  # fmt: skip
        audit.record(conn, entry, now=now)
        return [_account_view(conn, a) for a in rows]


def get_ledger(
    platform: Platform, scope: RequestScope, account_id: int, *, limit: int = 100, before_seq: int | None = None,
    now: datetime | None = None,
) -> list[EntryView]:  # fmt: skip
    """The account's ledger, newest first; ``before_seq`` (the last seq of a page) pages back."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        account = _visible_account(conn, scope, account_id, now=now)
        entries = repo.ledger(conn, account.id, limit=min(max(limit, 1), MAX_PAGE), before_seq=before_seq)
        _record(conn, scope, "prepay.read", account, now=now, read="ledger", entries=len(entries))
        return [_entry_view(e, account.currency) for e in entries]


# --- payments and adjustments ----------------------------------------------------------------------


def _check_currency(account: repo.Account, currency: str) -> None:
    if currency != account.currency:
        raise InvalidInput(
            f"account {account.id} is in {account.currency}; a payment in {currency[:8]} is refused",
            code="wrong-currency",
        )


def record_payment(  # noqa: PLR0913 - the payment, then who asks and when
    platform: Platform, scope: RequestScope, account_id: int, *, amount: str | Decimal, currency: str,
    reference: str, idempotency_key: str | None = None, now: datetime | None = None,
) -> PaymentResult:  # fmt: skip
    """Record a top-up: a positive amount in the account's currency (at most its minor unit's places).

    Raises InvalidInput (wrong currency, zero, negative, too many decimals: nothing written), NotFound,
    Conflict (the idempotency key was used for a different payment).
    """
    now = now or platform.now()
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
        raise InvalidInput("an idempotency key has 1 to 128 characters")
    with platform.engine.begin() as conn:
        authorize(conn, scope, "prepay.payment", Resource("prepay-account", str(account_id)), purpose="billing",
                  now=now)  # fmt: skip
        account = repo.lock_account(conn, account_id, now=now)
        _check_currency(account, currency)
        micros = parse_money(amount, account.currency)
        if micros <= 0:
            raise InvalidInput("a payment must be a positive amount", code="invalid-amount")
        if idempotency_key is not None:
            earlier = repo.entry_by_key(conn, account.id, idempotency_key)
            if earlier is not None:
                if earlier.amount != micros or earlier.kind != "payment":
                    raise Conflict("this idempotency key was used for a different payment")
                return PaymentResult(_entry_view(earlier, account.currency), _account_view(conn, account), True, None)
        posting = repo.Posting("payment", micros, reference or "payment", idempotency_key=idempotency_key)
        entry = repo.post(conn, account.id, posting, actor=scope.principal, at=now)
        _record(conn, scope, "prepay.payment", account, now=now, seq=entry.seq, amount=micros)
        prepay_engine.evaluate_credit(conn, account, entry.balance_after, actor=scope.principal, now=now)
    return PaymentResult(_entry_view(entry, account.currency), *_after_change(platform, account_id, now=now))


def adjust(
    platform: Platform, scope: RequestScope, account_id: int, *, amount: str | Decimal, currency: str, reason: str,
    now: datetime | None = None,
) -> PaymentResult:  # fmt: skip
    """Post a signed adjustment (goodwill credit, a correction by hand) with its reason."""
    now = now or platform.now()
    if not reason.strip():
        raise InvalidInput("an adjustment needs a reason")
    with platform.engine.begin() as conn:
        authorize(conn, scope, "prepay.adjust", Resource("prepay-account", str(account_id)), purpose="billing",
                  now=now)  # fmt: skip
        account = repo.lock_account(conn, account_id, now=now)
        _check_currency(account, currency)
        micros = parse_money(amount, account.currency, places=6)
        if micros == 0:
            raise InvalidInput("an adjustment of zero changes nothing", code="invalid-amount")
        entry = repo.post(conn, account.id, repo.Posting("adjustment", micros, reason.strip()), actor=scope.principal,
                          at=now)  # fmt: skip
        _record(conn, scope, "prepay.adjust", account, now=now, seq=entry.seq, amount=micros, reason=reason[:120])
        prepay_engine.evaluate_credit(conn, account, entry.balance_after, actor=scope.principal, now=now)
    return PaymentResult(_entry_view(entry, account.currency), *_after_change(platform, account_id, now=now))


def _after_change(platform: Platform, account_id: int, *, now: datetime) -> tuple[AccountView, bool, str | None]:
    """Take the switch decision after a committed posting; (the account as it is then, False, decision)."""
    if platform.prepay is not None:
        decision = platform.prepay.enforce(account_id)
    else:  # no running prepay part (a CLI process): decide and submit here
        decision = prepay_engine.enforce(
            platform.engine, platform.settings, account_id, prepay_engine.switch_link(platform), now=now
        )
    with platform.engine.connect() as conn:
        account = repo.get_account(conn, account_id)
        assert account is not None
        return _account_view(conn, account), False, decision


# --- alerts ----------------------------------------------------------------------------------------


def list_alerts(
    platform: Platform, scope: RequestScope, *, account_id: int | None = None, open_only: bool = False,
    limit: int = 100, before_id: int | None = None, now: datetime | None = None,
) -> list[AlertView]:  # fmt: skip
    """Low- and zero-credit alerts the scope may see, newest first."""
    now = now or platform.now()
    with platform.engine.begin() as conn:
        authorize(conn, scope, "prepay.read", purpose="billing", now=now)
        visible = visible_meters(scope, "prepay.read", "billing")
        rows = repo.alerts(conn, visible=visible, account_id=account_id, open_only=open_only,
                           limit=min(max(limit, 1), MAX_PAGE), before_id=before_id)  # fmt: skip
        entry = audit.AuditEntry(scope.principal, "prepay.read", "ok", resource="prepay-alerts", purpose="billing",
                                 details={"alerts": len(rows)})  # fmt: skip
        audit.record(conn, entry, now=now)
        return [
            AlertView(a.id, a.account_id, a.meter_id, a.kind, format_money(a.balance, a.currency), a.currency,
                      a.raised_at, a.cleared_at)
            for a in rows
        ]  # fmt: skip


# --- the platform's prepayment part ----------------------------------------------------------------


def start(platform: Platform) -> None:
    """Start debiting stored readings and the periodic check (inside the running loop); no-op when disabled."""
    settings = platform.settings.prepay
    if not settings.enabled or platform.prepay is not None:
        return
    engine = prepay_engine.PrepayEngine(
        platform.engine, platform.settings, switch=prepay_engine.switch_link(platform), now=platform.now
    )
    engine.subscribe(platform.bus)
    engine.start()
    platform.prepay = engine


async def stop(platform: Platform) -> None:
    """Stop the prepayment part (call after the bus is drained: every stored read is debited)."""
    if platform.prepay is not None:
        await platform.prepay.stop()
        platform.prepay = None
