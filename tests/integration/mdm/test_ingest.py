"""MDM ingest on SQLite and PostgreSQL: VEE + storage in one transaction per batch, and the bus side."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Connection, Engine

from openami.bus import READINGS_COLLECTED, READINGS_STORED, InProcessBus
from openami.db.meters import MeterSpec, upsert_meters
from openami.db.readings import count_intervals, last_actual_interval_end, read_intervals, read_versions
from openami.db.registers import read_registers
from openami.domain.messages import CollectedReadings, ReadingsStored
from openami.domain.meters import CustomerClass, MeterKind
from openami.domain.readings import Channel, Quality, RegisterSnapshot
from openami.errors import NotFound
from openami.mdm.ingest import Ingestor
from openami.mdm.vee import CHANNEL_IMPORT, SOURCE_ESTIMATED, SOURCE_METER
from openami.settings import VeeSettings

S = 900
MONDAY = 1_772_409_600  # 2026-03-02 00:00 UTC
WEEK = 7 * 86_400
EST_GAP = int(Quality.ESTIMATED | Quality.GAP)


def add_meters(conn: Connection, count: int) -> list[int]:
    specs = [
        MeterSpec(
            serial=f"VEE{n:08d}",
            kind=MeterKind.ELECTRIC,
            customer_class=CustomerClass.RESIDENTIAL,
            host="127.0.0.1",
            port=4059,
            system_title=n.to_bytes(8, "big"),
            model="openami-sim-e1",
            firmware="1.0.0",
        )
        for n in range(1, count + 1)
    ]
    ids = upsert_meters(conn, specs, now=datetime(2026, 3, 1, tzinfo=UTC))
    return [ids[s.serial] for s in specs]


@pytest.fixture
def meters(engine: Engine) -> list[int]:
    with engine.begin() as conn:
        return add_meters(conn, 3)


def make_read(
    meter_id: int,
    values: list[float],
    *,
    start: int = MONDAY,
    drop: frozenset[int] | set[int] = frozenset(),
    registers: tuple[RegisterSnapshot, ...] = (),
) -> CollectedReadings:
    ends = [start + S * (i + 1) for i in range(len(values))]
    keep = [i for i in range(len(values)) if i not in drop]
    read_at = datetime.fromtimestamp(ends[-1] + 120, UTC)
    return CollectedReadings(
        meter_id=meter_id,
        read_at=read_at,
        meter_clock=read_at + timedelta(seconds=2),
        requested_from=ends[0],
        requested_to=ends[-1],
        interval_ends=tuple(ends[i] for i in keep),
        import_wh=tuple(values[i] for i in keep),
        export_wh=tuple(0.0 for _ in keep),
        status=tuple(0 for _ in keep),
        registers=registers,
    )


def test_a_reingested_batch_adds_nothing(engine: Engine, meters: list[int]) -> None:
    batch = [make_read(m, [100.0 + i for i in range(96)]) for m in meters]
    ingestor = Ingestor(engine, VeeSettings())
    first = ingestor.ingest(batch)
    assert (first.inserted, first.superseded, first.unchanged) == (3 * 192, 0, 0)
    again = Ingestor(engine, VeeSettings()).ingest(batch)  # a redelivery, even after a restart
    assert (again.inserted, again.superseded, again.unchanged) == (0, 0, 3 * 192)
    with engine.connect() as conn:
        assert count_intervals(conn, MONDAY, MONDAY + 86_400, meter_ids=meters) == dict.fromkeys(meters, 192)


def test_a_gap_is_estimated_then_replaced_by_the_actual_and_the_estimate_kept(
    engine: Engine, meters: list[int]
) -> None:
    meter = meters[0]
    values = [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    ingestor = Ingestor(engine, VeeSettings())
    first = ingestor.ingest([make_read(meter, values, drop={2})])
    assert first.estimated == 2  # both channels
    gap_end = MONDAY + 3 * S
    with engine.connect() as conn:
        (estimate,) = read_intervals(conn, meter, gap_end, gap_end, CHANNEL_IMPORT)
        assert (estimate.value, estimate.quality, estimate.source) == (300.0, EST_GAP, SOURCE_ESTIMATED)
        assert last_actual_interval_end(conn, meter) == MONDAY + 6 * S

    actual = [*values[:2], 333.0, *values[3:]]
    second = ingestor.ingest([make_read(meter, actual)])  # the head-end's catch-up brings it
    assert second.superseded == 2
    with engine.connect() as conn:
        versions = read_versions(conn, meter, CHANNEL_IMPORT, gap_end)
    assert [(v.value, v.source, v.version) for v in versions] == [
        (300.0, SOURCE_ESTIMATED, 1),
        (333.0, SOURCE_METER, 2),
    ]
    assert versions[-1].quality == 0


def test_a_failing_write_stores_nothing_of_the_batch(engine: Engine, meters: list[int]) -> None:
    good = [make_read(m, [100.0] * 8) for m in meters]
    unknown_meter = make_read(999_999, [100.0] * 8)
    ingestor = Ingestor(engine, VeeSettings())
    with pytest.raises(NotFound):
        ingestor.ingest([*good, unknown_meter])
    with engine.connect() as conn:
        assert count_intervals(conn, MONDAY, MONDAY + 86_400, meter_ids=meters) == {}


def test_register_snapshots_are_stored_with_the_intervals(engine: Engine, meters: list[int]) -> None:
    at = datetime.fromtimestamp(MONDAY + 4 * S, UTC)
    regs = (
        RegisterSnapshot(meters[0], str(Channel.ACTIVE_IMPORT), datetime.fromtimestamp(MONDAY, UTC), 1.0, "kWh", at),
        RegisterSnapshot(meters[0], str(Channel.ACTIVE_IMPORT), at, 1.5, "kWh", at),  # 500 Wh vs 400 Wh
    )
    result = Ingestor(engine, VeeSettings()).ingest([make_read(meters[0], [100.0] * 4, registers=regs)])
    assert result.flagged == 4
    with engine.connect() as conn:
        assert [r.value for r in read_registers(conn, meters[0], MONDAY, MONDAY + 86_400)] == [1.0, 1.5]
        stored = read_intervals(conn, meters[0], MONDAY, MONDAY + 86_400, CHANNEL_IMPORT)
    assert all(r.quality == int(Quality.REGISTER_MISMATCH) for r in stored)


def test_a_long_gap_is_estimated_from_last_weeks_stored_values(engine: Engine, meters: list[int]) -> None:
    meter = meters[1]
    last_week = [50.0 + i for i in range(24)]
    ingestor = Ingestor(engine, VeeSettings())
    ingestor.ingest([make_read(meter, last_week, start=MONDAY - WEEK)])
    result = ingestor.ingest([make_read(meter, [999.0] * 24, drop=set(range(5, 15)))])
    assert result.estimated == 20
    with engine.connect() as conn:
        rows = read_intervals(conn, meter, MONDAY + 6 * S, MONDAY + 15 * S, CHANNEL_IMPORT)
    assert [r.value for r in rows] == [50.0 + i for i in range(5, 15)]
    assert {r.quality for r in rows} == {EST_GAP}


async def test_reads_published_on_the_bus_are_stored_and_announced(engine: Engine, meters: list[int]) -> None:
    bus = InProcessBus()
    ingestor = Ingestor(engine, VeeSettings(), batch_values=300, max_delay_s=0.05)
    ingestor.subscribe(bus)
    announced: list[ReadingsStored] = []
    all_in = asyncio.Event()

    async def on_stored(msg: ReadingsStored) -> None:
        announced.append(msg)
        if len(announced) == len(meters):
            all_in.set()

    bus.subscribe(READINGS_STORED, on_stored)
    for m in meters:
        await bus.publish(READINGS_COLLECTED, make_read(m, [10.0] * 96))  # 192 values: two fill a batch
    await asyncio.wait_for(all_in.wait(), timeout=10)  # the last one by the deadline flush
    await ingestor.close()
    await bus.close()
    assert sorted(a.meter_id for a in announced) == sorted(meters)
    assert all(a.counts.values == 192 and a.last_interval_end == MONDAY + 96 * S for a in announced)
    with engine.connect() as conn:
        assert count_intervals(conn, MONDAY, MONDAY + 86_400, meter_ids=meters) == dict.fromkeys(meters, 192)


async def test_one_bad_read_on_the_bus_does_not_hold_back_the_others(engine: Engine, meters: list[int]) -> None:
    bus = InProcessBus()
    ingestor = Ingestor(engine, VeeSettings(), batch_values=10**9, max_delay_s=60)
    ingestor.subscribe(bus)
    for m in [meters[0], 999_999, meters[1]]:
        await bus.publish(READINGS_COLLECTED, make_read(m, [10.0] * 4))
    await bus.drain()
    result = await ingestor.flush()
    await bus.close()
    assert result is not None
    assert sorted(s.meter_id for s in result.stored) == sorted(meters[:2])
    with engine.connect() as conn:
        assert count_intervals(conn, MONDAY, MONDAY + 86_400, meter_ids=meters) == dict.fromkeys(meters[:2], 8)


async def test_a_long_gap_arriving_on_the_bus_is_estimated_from_stored_history(
    engine: Engine, meters: list[int]
) -> None:
    meter = meters[2]
    ingestor = Ingestor(engine, VeeSettings(), max_delay_s=60)
    ingestor.ingest([make_read(meter, [70.0 + i for i in range(24)], start=MONDAY - WEEK)])
    bus = InProcessBus()
    ingestor.subscribe(bus)
    await bus.publish(READINGS_COLLECTED, make_read(meter, [5.0] * 24, drop=set(range(0, 12))))
    await bus.drain()
    result = await ingestor.flush()
    await bus.close()
    assert result is not None
    assert result.estimated == 24
    with engine.connect() as conn:
        rows = read_intervals(conn, meter, MONDAY + S, MONDAY + 12 * S, CHANNEL_IMPORT)
    assert [r.value for r in rows] == [70.0 + i for i in range(12)]


@pytest.mark.parametrize("lanes", [1, 2, 3])
async def test_a_meters_reads_are_stored_in_arrival_order_whatever_the_lanes(
    engine: Engine, meters: list[int], lanes: int
) -> None:
    """Every read of a meter goes through the same lane, so a newer value is never overtaken by an older one."""
    bus = InProcessBus()
    ingestor = Ingestor(engine, VeeSettings(), batch_values=8, max_delay_s=60, lanes=lanes)  # a batch per read
    ingestor.subscribe(bus)
    for version in range(4):
        for m in meters:
            await bus.publish(READINGS_COLLECTED, make_read(m, [10.0 + version] * 4))
    await bus.drain()
    await ingestor.close()
    await bus.close()
    with engine.connect() as conn:
        for m in meters:
            stored = read_intervals(conn, m, MONDAY, MONDAY + 4 * S, CHANNEL_IMPORT)
            assert [r.value for r in stored] == [13.0] * 4
            assert {r.version for r in stored} == {4}
