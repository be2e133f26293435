"""Prepayment rules without storage: money, energy pricing, credit states, friendly-credit hours, switch decisions.

Money is an ``int`` of micro-units (1e-6) of the currency's major unit: ``EUR 12.34`` is 12_340_000.
Floats never touch money: amounts come in as decimal strings (or ``Decimal``), are checked against the
currency's minor unit (ISO 4217 exponent) and leave as decimal strings. Energy is an ``int`` of mWh,
converted once from the stored Wh float (its shortest decimal representation, rounded half to even).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from openami.errors import InvalidInput

__all__ = [
    "MICROS",
    "FriendlyHours",
    "credit_state",
    "currency_exponent",
    "decide_switch",
    "energy_mwh",
    "format_money",
    "parse_money",
    "price_energy",
]

MICROS = 1_000_000  # micro-units per major unit
_MWH_PER_KWH = 1_000_000
_MAX_MONEY = 10**18  # |amount| bound: fits a BIGINT with room for sums

# ISO 4217 exponents that are not 2 (2026 list), then every other active code (exponent 2).


def _codes(text: str) -> list[str]:
    return text.split()


_EXPONENTS = {
    **dict.fromkeys(_codes("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"), 0),
    **dict.fromkeys(_codes("BHD IQD JOD KWD LYD OMR TND"), 3),
    **dict.fromkeys(_codes("CLF UYW"), 4),
}
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF "
    "CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD "
    "HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT "
    "MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR "
    "SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU "
    "UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)
_EXPONENTS.update(dict.fromkeys(_codes(_TWO), 2))


def currency_exponent(currency: str) -> int:
    """Digits of the minor unit of an active ISO 4217 currency; InvalidInput for anything else."""
    exponent = _EXPONENTS.get(currency)
    if exponent is None:
        raise InvalidInput(f"{currency[:8]!r} is not an ISO 4217 currency code", code="unknown-currency")
    return exponent


def parse_money(value: str | Decimal | int, currency: str, *, places: int | None = None) -> int:
    """``value`` (major units, e.g. "12.34") as micro-units.

    ``places`` is the most decimal places allowed: default the currency's minor unit (payments: no
    fraction of a cent), up to 6 for prices. InvalidInput for anything else, never a silent rounding.
    """
    exponent = currency_exponent(currency)
    allowed = exponent if places is None else places
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(f"{str(value)[:32]!r} is not a decimal amount", code="invalid-amount") from None
    if not amount.is_finite():
        raise InvalidInput("an amount must be a finite number", code="invalid-amount")
    exponent_of_value = amount.normalize().as_tuple().exponent
    assert isinstance(exponent_of_value, int)  # finite
    if -exponent_of_value > allowed:
        raise InvalidInput(f"{currency} amounts have at most {allowed} decimal places", code="invalid-amount")
    micros = int(amount * MICROS)
    if abs(micros) >= _MAX_MONEY:
        raise InvalidInput("amount out of range", code="invalid-amount")
    return micros


def format_money(micros: int, currency: str) -> str:
    """Micro-units as a decimal string in major units: the currency's minor digits, more only if needed."""
    exponent = _EXPONENTS.get(currency, 2)
    text = Decimal(micros).scaleb(-6)
    least = Decimal(1).scaleb(-exponent)
    if text == text.quantize(least):
        return str(text.quantize(least))
    return str(text.normalize())


def energy_mwh(value_wh: float) -> int:
    """A stored interval value (Wh, float) as whole mWh: exact for every value written with 3 decimals."""
    mwh = (Decimal(repr(value_wh)) * 1000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return max(int(mwh), 0)  # import energy is never negative; a negative value debits nothing


def price_energy(mwh: int, price_per_kwh: int) -> int:
    """Micro-units for ``mwh`` at ``price_per_kwh`` micro-units per kWh, rounded half to even."""
    quotient, remainder = divmod(mwh * price_per_kwh, _MWH_PER_KWH)
    twice = 2 * remainder
    if twice > _MWH_PER_KWH or (twice == _MWH_PER_KWH and quotient % 2):
        quotient += 1
    return quotient


def credit_state(balance: int, low_threshold: int) -> str:
    """The credit state: "zero" at or below zero, "low" at or below the low-credit threshold, else "ok"."""
    if balance <= 0:
        return "zero"
    if balance <= low_threshold:
        return "low"
    return "ok"


def decide_switch(
    *, balance: int, state: str, in_friendly_hours: bool, reconnect_threshold: int, entries: int = 1
) -> str | None:
    """What the supply switch should do now: "disconnect", "reconnect" or None.

    Zero credit disconnects a connected supply, except during friendly-credit hours and on an account
    with no ledger entry yet (enrolment alone is no reason to cut the supply); a disconnected supply is
    reconnected once the balance is above ``reconnect_threshold`` (whatever the hour).
    """
    if state == "connected" and balance <= 0 and entries > 0 and not in_friendly_hours:
        return "disconnect"
    if state == "disconnected" and balance > max(reconnect_threshold, 0):
        return "reconnect"
    return None


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^(?P<days>[a-z]{3}(?:-[a-z]{3})?(?:,[a-z]{3}(?:-[a-z]{3})?)*)(?:\s+(?P<from>\d\d:\d\d)-(?P<to>\d\d:\d\d))?$"
)


@dataclass(frozen=True, slots=True)
class _Window:
    days: frozenset[int]  # 0 = Monday
    start: int  # minute of the day the window opens
    end: int  # minute it closes; <= start: it runs past midnight into the next day


@dataclass(frozen=True, slots=True)
class FriendlyHours:
    """When zero credit does not disconnect: weekly windows in a time zone, plus whole-day holidays.

    The text form is windows separated by ";": days ("mon-fri", "sat,sun") and an optional
    "HH:MM-HH:MM" (the whole day without it; a window ending before it starts runs past midnight),
    e.g. "mon-fri 18:00-08:00; sat-sun". An empty text means no friendly hours.
    """

    text: str
    windows: tuple[_Window, ...]
    zone: ZoneInfo
    holidays: frozenset[date] = frozenset()

    @classmethod
    def parse(cls, text: str, *, zone: str = "UTC", holidays: Iterable[date] = ()) -> FriendlyHours:
        windows = tuple(_parse_window(part.strip().lower()) for part in text.split(";") if part.strip())
        return cls(text.strip(), windows, ZoneInfo(zone), frozenset(holidays))

    def contains(self, at: datetime) -> bool:
        """True when ``at`` (aware) falls in a window or on a holiday (both in the configured zone)."""
        local = at.astimezone(self.zone)
        if local.date() in self.holidays:
            return True
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        yesterday = (local - timedelta(days=1)).weekday()
        for w in self.windows:
            if w.start < w.end and day in w.days and w.start <= minute < w.end:
                return True
            if w.start >= w.end and ((day in w.days and minute >= w.start) or (yesterday in w.days and minute < w.end)):
                return True
        return False


def _parse_window(part: str) -> _Window:
    match = _WINDOW.match(part)
    if match is None:
        raise InvalidInput(f"friendly hours: {part[:40]!r} is not like 'mon-fri 18:00-08:00'", code="invalid-hours")
    days: set[int] = set()
    for span in match["days"].split(","):
        first, _, last = span.partition("-")
        days |= _day_span(first, last or first)
    if match["from"] is None:
        return _Window(frozenset(days), 0, 24 * 60)
    start, end = _minute(match["from"]), _minute(match["to"])
    if start == end:
        raise InvalidInput(f"friendly hours: {part[:40]!r} is an empty window", code="invalid-hours")
    return _Window(frozenset(days), start, end)


def _day_span(first: str, last: str) -> set[int]:
    if first not in _DAYS or last not in _DAYS:
        raise InvalidInput(f"friendly hours: days are {', '.join(_DAYS)}", code="invalid-hours")
    a, b = _DAYS.index(first), _DAYS.index(last)
    return {(a + i) % 7 for i in range((b - a) % 7 + 1)}


def _minute(text: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise InvalidInput(f"friendly hours: {text!r} is not a time of day", code="invalid-hours")
    return hours * 60 + minutes
