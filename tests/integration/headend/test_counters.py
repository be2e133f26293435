"""Invocation counters survive restarts and never go backwards (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine

from openami.db import counters as counter_repo
from openami.db.meters import MeterSpec, upsert_meters
from openami.domain.meters import CustomerClass, MeterKind
from openami.headend.counters import CLIENT_IC_BLOCK, CounterStore, reserve_ahead


@pytest.fixture
def meter_ids(engine: Engine) -> list[int]:
    specs = [
        MeterSpec(
            f"CTR{i:04d}",
            MeterKind.ELECTRIC,
            CustomerClass.RESIDENTIAL,
            "127.0.0.1",
            4059,
            bytes([0x4F, 0x41, 0x4D, 0, 0, 0, 0, i]),
            "m",
            "1",
            None,
        )
        for i in range(1, 6)
    ]
    with engine.begin() as conn:
        return sorted(upsert_meters(conn, specs, now=datetime.now(UTC)).values())


async def test_a_restart_never_reuses_a_reserved_client_counter(engine: Engine, meter_ids: list[int]) -> None:
    first = CounterStore(engine)
    a, _ = await first.reserve(meter_ids[0])
    # the process dies here, mid-session, without recording what it used
    second = CounterStore(engine)
    b, _ = await second.reserve(meter_ids[0])
    assert b >= a + CLIENT_IC_BLOCK
    await first.close()
    await second.close()


async def test_concurrent_records_are_grouped_and_durable(engine: Engine, meter_ids: list[int]) -> None:
    store = CounterStore(engine)
    await asyncio.gather(
        *(store.record(m, client_ic_next=100 + m, server_ic_last=50 + m) for m in meter_ids),
        store.record(meter_ids[0], client_ic_next=10, server_ic_last=5),  # older: must not win
    )
    await store.close()
    with engine.connect() as conn:
        for m in meter_ids:
            assert counter_repo.get(conn, m) == (100 + m, 50 + m)


async def test_background_records_commit_in_their_own_group_and_are_as_durable(
    engine: Engine, meter_ids: list[int]
) -> None:
    store = CounterStore(engine)
    mark = store.mark()
    background = [
        asyncio.ensure_future(store.record(m, client_ic_next=200 + m, server_ic_last=70 + m, background=True))
        for m in meter_ids[1:]
    ]
    await store.record(meter_ids[0], client_ic_next=300, server_ic_last=90)  # its own group: does not wait for them
    assert not store.unchanged_since(meter_ids[0], mark)
    await asyncio.gather(*background)
    assert all(not store.unchanged_since(m, mark) for m in meter_ids)
    late = asyncio.ensure_future(store.record(meter_ids[1], client_ic_next=900, server_ic_last=95, background=True))
    await asyncio.sleep(0)  # submitted, not yet flushed: close() must still write it
    await store.close()
    await late
    with engine.connect() as conn:
        assert counter_repo.get(conn, meter_ids[0]) == (300, 90)
        assert counter_repo.get(conn, meter_ids[1]) == (900, 95)
        for m in meter_ids[2:]:
            assert counter_repo.get(conn, m) == (200 + m, 70 + m)


async def test_reserve_many_reserves_every_meter_in_one_go(engine: Engine, meter_ids: list[int]) -> None:
    store = CounterStore(engine)
    await store.record(meter_ids[1], client_ic_next=7, server_ic_last=99)
    reserved = await store.reserve_many(meter_ids)
    assert set(reserved) == set(meter_ids)
    assert reserved[meter_ids[1]] == (7, 99)
    again = await store.reserve_many(meter_ids)
    assert all(again[m][0] == reserved[m][0] + CLIENT_IC_BLOCK for m in meter_ids)
    await store.close()


async def test_reserve_many_matches_one_by_one_reservation(engine: Engine, meter_ids: list[int]) -> None:
    """The bulk path and the single path reserve the same blocks and see the same server counters."""
    store = CounterStore(engine)
    for m in meter_ids:
        await store.record(m, client_ic_next=10 * m, server_ic_last=m)
    bulk = await store.reserve_many(meter_ids)
    single = {m: await store.reserve(m) for m in meter_ids}
    for m in meter_ids:
        assert bulk[m] == (10 * m, m)
        assert single[m] == (10 * m + CLIENT_IC_BLOCK, m)
    await store.close()


async def test_a_block_reserved_ahead_is_current_until_a_counter_operation_on_its_meter_completes(
    engine: Engine, meter_ids: list[int]
) -> None:
    store = CounterStore(engine)
    await store.record(meter_ids[0], client_ic_next=10, server_ic_last=5)
    now = datetime.now(UTC)
    with engine.begin() as conn:  # a caller's own transaction (the command queue's claim)
        block = reserve_ahead(conn, meter_ids[0], mark=store.mark(), now=now)
        other = reserve_ahead(conn, meter_ids[1], mark=store.mark(), now=now)
    assert (block.client_ic_next, block.server_ic_last, block.key_version) == (10, 5, 1)
    assert store.unchanged_since(meter_ids[0], block.mark)
    await store.record(meter_ids[0], client_ic_next=block.client_ic_next + 3, server_ic_last=9)
    assert not store.unchanged_since(meter_ids[0], block.mark)  # its server counter is stale now
    assert store.unchanged_since(meter_ids[1], other.mark)
    first, server = await store.reserve(meter_ids[0])
    assert first >= block.client_ic_next + CLIENT_IC_BLOCK  # blocks never overlap
    assert server == 9
    await store.close()


def test_advance_many_applies_a_meters_rows_in_order_and_never_backwards(engine: Engine, meter_ids: list[int]) -> None:
    """One call with the same meter several times (PostgreSQL updates a row once per statement)."""
    a, b, c = meter_ids[:3]
    now = datetime.now(UTC)
    with engine.begin() as conn:
        counter_repo.switch_key_version(conn, c, 2, server_ic_last=None, now=now)
        counter_repo.advance_many(
            conn,
            [
                (a, 10, 5, None),
                (b, 7, None, None),
                (a, 20, 3, None),  # the client counter goes up, the server's seen counter does not go down
                (a, 15, 9, None),  # an older client counter loses, a newer server one wins
                (c, 30, 12, 2),  # the stored key version: counted
                (c, 40, 99, 1),  # a retired key version's server counter is not this key's
            ],
            now=now,
        )
    with engine.connect() as conn:
        assert counter_repo.get(conn, a) == counter_repo.Counters(20, 9)
        assert counter_repo.get(conn, b) == counter_repo.Counters(7, None)
        assert counter_repo.get_for_key(conn, c) == (counter_repo.Counters(40, 12), 2)
