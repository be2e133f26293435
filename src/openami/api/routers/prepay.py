"""Prepayment: tariffs, accounts and balances, payments (top-ups), adjustments, the ledger, alerts, reconciliation.

Money is a JSON string of a decimal amount in major units ("12.50"), never a number: it is exact and
carries the account's currency. A payment takes an ``Idempotency-Key`` header: repeating it returns
the payment recorded the first time (200 instead of 201) and records nothing new. A payment in
another currency than the account's, or of zero or a negative amount, is a 422 problem and writes
nothing. Customers see only the accounts of their own premises.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from openami.api.auth import PlatformDep, Scope
from openami.api.problems import PROBLEM_JSON
from openami.services import prepay as prepay_services
from openami.services import prepay_reconcile

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in (
        (401, "missing or invalid token"),
        (403, "not allowed (prepay.* or tariffs.manage)"),
        (404, "unknown meter, tariff or account (or one outside the caller's premises)"),
        (409, "already enrolled, tariff code taken, or the idempotency key was used for another payment"),
        (422, "invalid request: wrong currency, amount not positive, too many decimals, bad friendly hours"),
    )
}
router = APIRouter(prefix="/v1/prepay", tags=["prepayment"], responses=_ERRORS)
AccountId = Annotated[int, Path(ge=1, le=2**62, description="a prepayment account's id")]
_AMOUNT = r"^\d{1,12}(\.\d{1,6})?$"
_SIGNED = r"^-?\d{1,12}(\.\d{1,6})?$"
_CURRENCY = r"^[A-Z]{3}$"
Money = Annotated[str, Field(pattern=_AMOUNT, examples=["12.50"], description="decimal amount, major units")]


class TariffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
    name: str = Field(min_length=1, max_length=128)
    currency: str = Field(pattern=_CURRENCY, description="ISO 4217")
    price_per_kwh: Money
    standing_charge_per_day: Money


class TariffOut(BaseModel):
    id: int
    code: str
    name: str
    currency: str
    price_per_kwh: str
    standing_charge_per_day: str
    created_at: datetime


class EnrolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    meter_id: int = Field(ge=1, le=2**31 - 1)
    tariff_code: str = Field(min_length=1, max_length=32)
    low_credit_threshold: Money | None = Field(default=None, description="default: prepay.default_low_credit")
    friendly_hours: str | None = Field(
        default=None, max_length=255, examples=["mon-sun 18:00-08:00; sat-sun"],
        description="when zero credit does not disconnect; default: prepay.friendly_hours",
    )  # fmt: skip


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tariff_code: str | None = Field(default=None, min_length=1, max_length=32)
    low_credit_threshold: Money | None = None
    friendly_hours: str | None = Field(default=None, max_length=255)


class AccountOut(BaseModel):
    id: int
    meter_id: int
    premise_id: str | None
    currency: str
    tariff_code: str
    balance: str = Field(description="decimal amount in the account's currency; negative when in debt")
    low_credit_threshold: str
    friendly_hours: str
    state: str = Field(description="connected or disconnected (the supply, as prepayment last commanded it)")
    credit_state: str = Field(description="ok, low or zero")
    debited_through: datetime | None = Field(description="end of the newest interval debited")
    last_command_id: int | None
    last_switch_error: str | None = Field(description="why the last switch decision was not carried out")
    created_at: datetime


class PaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Money
    currency: str = Field(pattern=_CURRENCY, description="must be the account's currency")
    reference: str = Field(default="payment", min_length=1, max_length=128, description="e.g. the shop's receipt")


class AdjustmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: str = Field(pattern=_SIGNED, examples=["-2.50"], description="signed: credit (+) or debit (-)")
    currency: str = Field(pattern=_CURRENCY)
    reason: str = Field(min_length=1, max_length=128)


class EntryOut(BaseModel):
    seq: int
    kind: str = Field(description="payment, consumption, standing-charge, adjustment or correction")
    amount: str
    balance_after: str
    energy_kwh: str | None
    period_start: datetime | None
    period_end: datetime | None
    reference: str
    actor: str
    at: datetime


class PaymentOut(BaseModel):
    entry: EntryOut
    account: AccountOut
    duplicate: bool = Field(description="the idempotency key was used before: nothing new was recorded")
    switch: str | None = Field(description="'reconnect' or 'disconnect' when the posting moved the supply switch")


class LedgerPage(BaseModel):
    entries: list[EntryOut]
    next_before_seq: int | None = Field(description="pass as before_seq for the next (older) page")


class AlertOut(BaseModel):
    id: int
    account_id: int
    meter_id: int
    kind: str = Field(description="low-credit or zero-credit")
    balance: str
    currency: str
    raised_at: datetime
    cleared_at: datetime | None


class ReconciliationOut(BaseModel):
    account_id: int
    meter_id: int
    status: str = Field(description="ok, difference or no-registers")
    register_from: datetime | None
    register_to: datetime | None
    register_wh: float | None
    debited_wh: float | None
    difference_wh: float | None
    intervals: int


def _account(view: prepay_services.AccountView) -> AccountOut:
    return AccountOut.model_validate(view, from_attributes=True)


def _payment(result: prepay_services.PaymentResult) -> PaymentOut:
    return PaymentOut(
        entry=EntryOut.model_validate(result.entry, from_attributes=True), account=_account(result.account),
        duplicate=result.duplicate, switch=result.switch,
    )  # fmt: skip


@router.post("/tariffs", status_code=201, response_model=TariffOut, summary="Define a tariff")
def define_tariff(platform: PlatformDep, scope: Scope, body: TariffIn) -> TariffOut:
    """A tariff is immutable: a price change is a new tariff that accounts are moved to."""
    view = prepay_services.define_tariff(
        platform, scope, code=body.code, name=body.name, currency=body.currency, price_per_kwh=body.price_per_kwh,
        standing_charge_per_day=body.standing_charge_per_day,
    )  # fmt: skip
    return TariffOut.model_validate(view, from_attributes=True)


@router.get("/tariffs", response_model=list[TariffOut], summary="List tariffs")
def list_tariffs(platform: PlatformDep, scope: Scope) -> list[TariffOut]:
    return [TariffOut.model_validate(t, from_attributes=True) for t in prepay_services.list_tariffs(platform, scope)]


@router.post("/accounts", status_code=201, response_model=AccountOut, summary="Enrol a meter in prepayment")
def enrol(platform: PlatformDep, scope: Scope, body: EnrolIn) -> AccountOut:
    """Balance zero, supply connected; consumption is debited from the next interval on."""
    return _account(
        prepay_services.enrol(
            platform,
            scope,
            meter_id=body.meter_id,
            tariff_code=body.tariff_code,
            low_credit_threshold=body.low_credit_threshold,
            friendly_hours=body.friendly_hours,
        )
    )


@router.get("/accounts", response_model=list[AccountOut], summary="List prepayment accounts")
def list_accounts(
    platform: PlatformDep,
    scope: Scope,
    state: Annotated[str | None, Query(pattern="^(connected|disconnected)$")] = None,
    credit_state: Annotated[str | None, Query(pattern="^(ok|low|zero)$")] = None,
    meter_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=prepay_services.MAX_PAGE)] = 100,
    after_id: Annotated[int, Query(ge=0, description="the last id of the previous page")] = 0,
) -> list[AccountOut]:
    views = prepay_services.list_accounts(
        platform, scope, state=state, credit_state=credit_state, meter_id=meter_id, limit=limit, after_id=after_id
    )
    return [_account(v) for v in views]


@router.get("/accounts/{account_id}", response_model=AccountOut, summary="An account with its balance")
def get_account(platform: PlatformDep, scope: Scope, account_id: AccountId) -> AccountOut:
    return _account(prepay_services.get_account(platform, scope, account_id))


@router.patch("/accounts/{account_id}", response_model=AccountOut, summary="Change tariff, threshold or hours")
def update_account(platform: PlatformDep, scope: Scope, account_id: AccountId, body: AccountPatch) -> AccountOut:
    return _account(
        prepay_services.update_account(
            platform,
            scope,
            account_id,
            tariff_code=body.tariff_code,
            low_credit_threshold=body.low_credit_threshold,
            friendly_hours=body.friendly_hours,
        )
    )


@router.post(
    "/accounts/{account_id}/payments", status_code=201, response_model=PaymentOut, summary="Record a payment (top-up)",
    responses={200: {"description": "a repeated Idempotency-Key: the payment recorded the first time"}},
)  # fmt: skip
def record_payment(
    platform: PlatformDep,
    scope: Scope,
    account_id: AccountId,
    body: PaymentIn,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=128, description="repeat-safe key")
    ] = None,
) -> PaymentOut:
    """A positive amount in the account's currency; reconnects a disconnected supply once above the threshold."""
    result = prepay_services.record_payment(
        platform, scope, account_id, amount=body.amount, currency=body.currency, reference=body.reference,
        idempotency_key=idempotency_key,
    )  # fmt: skip
    if result.duplicate:
        response.status_code = 200
    return _payment(result)


@router.post(
    "/accounts/{account_id}/adjustments", status_code=201, response_model=PaymentOut, summary="Post an adjustment"
)
def adjust(platform: PlatformDep, scope: Scope, account_id: AccountId, body: AdjustmentIn) -> PaymentOut:
    """A signed amount with its reason (goodwill credit, a correction by hand)."""
    return _payment(
        prepay_services.adjust(
            platform, scope, account_id, amount=body.amount, currency=body.currency, reason=body.reason
        )
    )


@router.get("/accounts/{account_id}/ledger", response_model=LedgerPage, summary="The account's ledger, newest first")
def ledger(
    platform: PlatformDep,
    scope: Scope,
    account_id: AccountId,
    limit: Annotated[int, Query(ge=1, le=prepay_services.MAX_PAGE)] = 100,
    before_seq: Annotated[int | None, Query(ge=1, description="next_before_seq of the previous page")] = None,
) -> LedgerPage:
    entries = prepay_services.get_ledger(platform, scope, account_id, limit=limit, before_seq=before_seq)
    more = len(entries) == limit and entries[-1].seq > 1
    return LedgerPage(
        entries=[EntryOut.model_validate(e, from_attributes=True) for e in entries],
        next_before_seq=entries[-1].seq if more else None,
    )


@router.get("/alerts", response_model=list[AlertOut], summary="Low- and zero-credit alerts, newest first")
def alerts(
    platform: PlatformDep,
    scope: Scope,
    account_id: Annotated[int | None, Query(ge=1)] = None,
    open_only: Annotated[bool, Query(alias="open", description="only alerts not cleared by a top-up")] = False,
    limit: Annotated[int, Query(ge=1, le=prepay_services.MAX_PAGE)] = 100,
    before_id: Annotated[int | None, Query(ge=1)] = None,
) -> list[AlertOut]:
    views = prepay_services.list_alerts(
        platform, scope, account_id=account_id, open_only=open_only, limit=limit, before_id=before_id
    )
    return [AlertOut.model_validate(v, from_attributes=True) for v in views]


@router.get(
    "/reconciliation", response_model=list[ReconciliationOut], summary="Debited energy against the import register"
)
def reconciliation(
    platform: PlatformDep,
    scope: Scope,
    start: Annotated[datetime, Query(alias="from", description="aware ISO 8601 time")],
    end: Annotated[datetime, Query(alias="to")],
    account_id: Annotated[int | None, Query(ge=1)] = None,
    tolerance_wh: Annotated[float | None, Query(ge=0, description="default: prepay.reconcile_tolerance_wh")] = None,
    only_differences: bool = False,
) -> list[ReconciliationOut]:
    rows = prepay_reconcile.reconcile(
        platform, scope, start, end, account_id=account_id, tolerance_wh=tolerance_wh,
        only_differences=only_differences,
    )  # fmt: skip
    return [ReconciliationOut.model_validate(r, from_attributes=True) for r in rows]
