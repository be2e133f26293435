"""Property-based ledger arithmetic on the real databases (hypothesis).

Any sequence of payments, adjustments, reads, re-deliveries and re-reads with changed values keeps
every entry's ``balance_after`` exactly the previous one plus its amount, the account's balance the
newest ``balance_after``, and the consumption debits and corrections together exactly the price of
the values stored now: a re-delivered read never debits twice and corrections net out to the cent
(to the micro-unit).
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from openami.db import prepay as repo
from openami.db.tables import interval_readings
from openami.domain.codes import ChannelCode
from openami.services import prepay
from openami.services.prepay_engine import debit_readings
from openami.services.prepay_rules import energy_mwh, price_energy

from .helpers import BILLING, T0, add_meters, make_platform, store, tariff

_meters = itertools.count(1)
_wh = st.integers(0, 5_000_000).map(lambda milli: milli / 1000)  # up to 5 kWh an interval, 3 decimals
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("pay"), st.integers(1, 100_000)),  # cents
        st.tuples(st.just("adjust"), st.integers(-50_000, 50_000).filter(bool)),
        st.tuples(st.just("read"), st.integers(0, 6), st.lists(_wh, min_size=1, max_size=3), st.booleans()),
    ),
    max_size=12,
)
PRICE = "0.237519"  # per kWh: six decimals, so rounding happens on almost every interval


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_any_sequence_keeps_the_ledger_exact(engine: Engine, tmp_path: Path, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    platform = make_platform(engine, tmp_path)
    with engine.connect() as conn:
        if not repo.tariffs(conn):
            tariff(platform, price=PRICE)
    (meter,) = add_meters(platform, 1, first=next(_meters))
    account = prepay.enrol(platform, BILLING, meter_id=meter, tariff_code="STD", now=T0)
    for op in ops:
        _apply(platform, account.id, meter, op)
    with engine.connect() as conn:
        entries = sorted(repo.ledger(conn, account.id, limit=10_000), key=lambda e: e.seq)
        stored = conn.execute(
            sa.select(interval_readings.c.value).where(
                interval_readings.c.meter_id == meter, interval_readings.c.channel == int(ChannelCode.ACTIVE_IMPORT)
            )
        ).scalars()
        expected_energy = [energy_mwh(v) for v in stored]
        final = repo.get_account(conn, account.id)
    balance = 0
    for entry in entries:
        assert entry.balance_after == balance + entry.amount
        balance = entry.balance_after
    assert final is not None
    assert final.balance == balance == sum(e.amount for e in entries)
    debits = [e for e in entries if e.kind in ("consumption", "correction")]
    price = 237_519
    assert -sum(e.amount for e in debits) == sum(price_energy(mwh, price) for mwh in expected_energy)
    assert sum(e.energy_mwh or 0 for e in debits) == sum(expected_energy)


def _apply(platform, account_id: int, meter: int, op: tuple) -> None:  # type: ignore[no-untyped-def,type-arg]
    if op[0] == "pay":
        prepay.record_payment(platform, BILLING, account_id, amount=f"{op[1] / 100:.2f}", currency="EUR",
                              reference="p", now=T0)  # fmt: skip
    elif op[0] == "adjust":
        prepay.adjust(platform, BILLING, account_id, amount=f"{op[1] / 100:.2f}", currency="EUR", reason="a", now=T0)
    else:
        _, slot, values, redeliver = op
        messages = store(platform, meter, T0 + timedelta(minutes=15 * slot), values)
        for msg in messages * (2 if redeliver else 1):
            with platform.engine.begin() as conn:
                debit_readings(conn, msg, now=T0 + timedelta(days=1))
