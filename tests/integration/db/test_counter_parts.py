"""Reserving many meters' invocation counters hands SQLite's write lock to a waiting writer between parts
(an outage's confirmation pings reserve hundreds at once), and a part committed stands on its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import counters as counter_repo
from openami.db import tables as t
from openami.db._sqlite_gate import gate_for
from tests.integration.db.helpers import add_meters

pytestmark = pytest.mark.parametrize("db_kind", ["sqlite"])  # PostgreSQL's writers lock rows: nothing to hand over

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
METERS = 2 * counter_repo._RESERVE_PART + 50  # three parts


class _Failed(Exception):
    pass


@pytest.fixture
def meter_ids(engine: Engine) -> list[int]:
    with engine.begin() as conn:
        return add_meters(conn, METERS)


@pytest.fixture
def writer_waiting(engine: Engine) -> Iterator[None]:
    """As the gate counts a writer of this process waiting for the write lock (a command's)."""
    assert engine.url.database is not None
    gate = gate_for(str(Path(engine.url.database).resolve()))
    gate._urgent(+1)
    try:
        yield
    finally:
        gate._urgent(-1)


def _reserved(engine: Engine) -> dict[int, int]:
    ic = t.invocation_counters.c
    with engine.connect() as conn:
        return {int(m): int(n) for m, n in conn.execute(sa.select(ic.meter_id, ic.client_ic_next))}


def _reserve_then_fail(engine: Engine, meter_ids: list[int]) -> dict[int, tuple[int, counter_repo.Counters, int]]:
    """Reserve in a transaction that then fails (what comes after the reservation in it)."""
    reserved: dict[int, tuple[int, counter_repo.Counters, int]] = {}

    def transaction() -> None:
        with engine.begin() as conn:
            reserved.update(counter_repo.reserve_client_ics_many(conn, meter_ids, 10, now=NOW))
            raise _Failed

    with pytest.raises(_Failed):
        transaction()
    return reserved


def test_every_meter_gets_its_block_whatever_the_parts(engine: Engine, meter_ids: list[int]) -> None:
    with engine.begin() as conn:
        first = counter_repo.reserve_client_ics_many(conn, meter_ids, 10, now=NOW)
        again = counter_repo.reserve_client_ics_many(conn, meter_ids, 10, now=NOW)
    assert sorted(first) == sorted(meter_ids)
    assert all(first[m][0] == 0 and again[m][0] == 10 and again[m][1].client_ic_next == 20 for m in meter_ids)
    assert _reserved(engine) == dict.fromkeys(meter_ids, 20)


def test_without_a_waiting_writer_the_reservation_is_one_transaction(engine: Engine, meter_ids: list[int]) -> None:
    _reserve_then_fail(engine, meter_ids)
    assert _reserved(engine) == {}  # all rolled back together


@pytest.mark.usefixtures("writer_waiting")
def test_a_waiting_writer_gets_the_lock_after_each_part(engine: Engine, meter_ids: list[int]) -> None:
    reserved = _reserve_then_fail(engine, meter_ids)
    assert sorted(reserved) == sorted(meter_ids)
    # every part was committed to let the writer in: the blocks stay reserved, never handed out again
    assert _reserved(engine) == dict.fromkeys(meter_ids, 10)
    with engine.begin() as conn:
        later = counter_repo.reserve_client_ics_many(conn, meter_ids[:1], 10, now=NOW)
    assert later[meter_ids[0]][0] == 10
