"""Interval ingest: idempotent, versioned, exactly one current row per (meter, channel, interval end)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db.readings import (
    IngestCounts,
    count_intervals,
    first_estimated_interval_ends,
    intervals_for_window,
    last_actual_interval_end,
    last_actual_interval_ends,
    read_intervals,
    read_versions,
    write_intervals,
)
from openami.db.registers import read_registers, write_registers
from openami.domain.codes import ChannelCode, SourceCode
from openami.domain.readings import Quality
from openami.errors import NotFound
from tests.integration.db.helpers import T0, add_meters

IMP, EXP = int(ChannelCode.ACTIVE_IMPORT), int(ChannelCode.ACTIVE_EXPORT)
METER, EST, MANUAL = int(SourceCode.METER), int(SourceCode.ESTIMATED), int(SourceCode.MANUAL)
RECV = T0 + 3600


def day(meter_id: int, *, value: float = 100.0, source: int = METER, quality: int = 0, start: int = T0, n: int = 96):
    rows = []
    for k in range(n):
        end = start + 900 * k
        rows.append((meter_id, IMP, end, value + k, quality, source, RECV))
        rows.append((meter_id, EXP, end, 0.0, quality, source, RECV))
    return rows


def write(engine: Engine, rows) -> IngestCounts:
    with engine.begin() as conn:
        return write_intervals(conn, rows)


def test_rereading_an_interval_adds_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
    assert write(engine, day(meter)) == IngestCounts(192, 0, 0)
    assert write(engine, day(meter)) == IngestCounts(0, 0, 192)
    with engine.connect() as conn:
        stored = read_intervals(conn, meter, T0, T0 + 95 * 900)
        assert len(stored) == 192
        assert {r.version for r in stored} == {1}
        assert conn.execute(sa.text("SELECT count(*) FROM interval_reading_versions")).scalar_one() == 0


def test_changed_value_becomes_version_2_and_version_1_is_kept(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
    write(engine, [(meter, IMP, T0, 10.0, 0, METER, RECV)])
    counts = write(engine, [(meter, IMP, T0, 12.5, int(Quality.EDITED), MANUAL, RECV + 60)])
    assert counts == IngestCounts(0, 1, 0)
    with engine.connect() as conn:
        versions = read_versions(conn, meter, IMP, T0)
        (current,) = read_intervals(conn, meter, T0, T0)
    assert [(v.version, v.value, v.source) for v in versions] == [(1, 10.0, METER), (2, 12.5, MANUAL)]
    assert current.version == 2
    assert current.value == 12.5
    assert current.quality == Quality.EDITED
    assert current.received_at == RECV + 60
    assert current.unit == "Wh"


def test_actual_replaces_estimate_but_estimate_never_replaces_actual(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        assert last_actual_interval_end(conn, meter) is None
    assert write(engine, day(meter, n=4)) == IngestCounts(8, 0, 0)
    estimates = day(meter, source=EST, quality=int(Quality.ESTIMATED), start=T0 + 4 * 900, n=4)
    assert write(engine, estimates) == IngestCounts(8, 0, 0)
    with engine.connect() as conn:
        assert last_actual_interval_end(conn, meter) == T0 + 3 * 900
        assert last_actual_interval_end(conn, meter, IMP) == T0 + 3 * 900
        assert first_estimated_interval_ends(conn, [meter, meter + 1], T0) == {meter: T0 + 4 * 900}
        assert first_estimated_interval_ends(conn, [meter], T0 + 6 * 900) == {meter: T0 + 7 * 900}
    actuals = day(meter, value=7.0, start=T0 + 4 * 900, n=4)
    assert write(engine, actuals) == IngestCounts(0, 8, 0)
    late_estimate = day(meter, value=1.0, source=EST, quality=int(Quality.ESTIMATED), n=4)
    assert write(engine, late_estimate) == IngestCounts(0, 0, 8)
    with engine.connect() as conn:
        assert last_actual_interval_end(conn, meter) == T0 + 7 * 900
        assert last_actual_interval_ends(conn, [meter, meter + 1]) == {meter: T0 + 7 * 900, meter + 1: None}
        assert first_estimated_interval_ends(conn, [meter], T0) == {}
        assert {r.source for r in read_intervals(conn, meter, T0, T0 + 7 * 900)} == {METER}
        history = read_versions(conn, meter, IMP, T0 + 4 * 900)
    assert [(v.version, v.source) for v in history] == [(1, EST), (2, METER)]


def test_postgres_view_shows_interval_ends_as_timestamps(engine: Engine, db_kind: str) -> None:
    if db_kind != "postgres":
        return  # the view is a PostgreSQL convenience for people; SQLite has datetime(x, 'unixepoch')
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        write_intervals(conn, [(meter, IMP, T0, 1.0, 0, METER, RECV)])
        end = conn.execute(sa.text("SELECT interval_end FROM interval_readings_utc")).scalar_one()
    assert int(end.timestamp()) == T0


def test_same_key_twice_in_one_batch_is_applied_in_order(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
    rows = [(meter, IMP, T0, 1.0, 0, METER, RECV), (meter, IMP, T0, 2.0, 0, METER, RECV + 1)]
    assert write(engine, rows) == IngestCounts(1, 1, 0)
    with engine.connect() as conn:
        assert [(v.version, v.value) for v in read_versions(conn, meter, IMP, T0)] == [(1, 1.0), (2, 2.0)]


def test_new_key_twice_in_one_batch_keeps_the_estimate_rule(engine: Engine) -> None:
    # SQLite stores a batch's new rows first and applies the rest in a second pass: a key new to the
    # table given twice must still end as one upsert after the other would leave it
    with engine.begin() as conn:
        a, b = add_meters(conn, 2)
    estimated = int(Quality.ESTIMATED)
    rows = [
        (a, IMP, T0, 1.0, estimated, EST, RECV), (a, IMP, T0, 2.0, 0, METER, RECV + 1),  # actual replaces estimate
        (b, IMP, T0, 3.0, 0, METER, RECV), (b, IMP, T0, 4.0, estimated, EST, RECV + 1),  # estimate does not
        (b, EXP, T0, 0.0, 0, METER, RECV), (b, EXP, T0, 0.0, 0, METER, RECV),  # the same row twice
    ]  # fmt: skip
    assert write(engine, rows) == IngestCounts(3, 1, 2)
    with engine.connect() as conn:
        history = {key: read_versions(conn, key[0], key[1], T0) for key in ((a, IMP), (b, IMP), (b, EXP))}
    assert [(v.version, v.source, v.value) for v in history[a, IMP]] == [(1, EST, 1.0), (2, METER, 2.0)]
    assert [(v.version, v.source, v.value) for v in history[b, IMP]] == [(1, METER, 3.0)]
    assert [(v.version, v.value) for v in history[b, EXP]] == [(1, 0.0)]


def test_mixed_batch_of_new_rereads_and_corrections(engine: Engine) -> None:
    with engine.begin() as conn:
        a, b, c = add_meters(conn, 3)
    write(engine, day(a, n=10) + day(b, n=10))
    batch = day(a, n=12) + day(b, value=5.0, n=10) + day(c, n=10)  # a: 2 new; b: 10 changed imports; c: new
    assert write(engine, batch) == IngestCounts(4 + 20, 10, 20 + 10)
    with engine.connect() as conn:
        assert count_intervals(conn, T0, T0 + 100 * 900, meter_ids=[a, b, c]) == {a: 24, b: 20, c: 20}
        window = list(intervals_for_window(conn, T0, T0 + 900, meter_ids=[c, a]))
    assert [(r.meter_id, r.channel, r.interval_end) for r in window] == [
        (a, IMP, T0), (a, IMP, T0 + 900), (a, EXP, T0), (a, EXP, T0 + 900),
        (c, IMP, T0), (c, IMP, T0 + 900), (c, EXP, T0), (c, EXP, T0 + 900),
    ]  # fmt: skip


def test_unknown_meter_is_refused_and_nothing_is_stored(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
    with pytest.raises(NotFound, match="unknown meter"), engine.begin() as conn:
        write_intervals(conn, day(meter, n=2) + day(meter + 1000, n=2))
    with engine.connect() as conn:
        assert read_intervals(conn, meter, T0, T0 + 900) == []


def test_bulk_ingest_of_100k_values_counts_right(engine: Engine) -> None:
    with engine.begin() as conn:
        meters = add_meters(conn, 521)
    rows = [row for m in meters for row in day(m)][:100_000]
    assert write(engine, rows) == IngestCounts(100_000, 0, 0)
    changed = [(m, ch, end, v + 1.0, q, s, r) for (m, ch, end, v, q, s, r) in rows[:1000]]
    assert write(engine, rows[:50_000] + changed) == IngestCounts(0, 1000, 50_000)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM interval_readings")).scalar_one() == 100_000
        assert conn.execute(sa.text("SELECT count(*) FROM interval_reading_versions")).scalar_one() == 1000


def test_register_snapshots_are_kept_once(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
        rows = [(meter, "1.0.1.8.0.255", T0, 12345.0, "Wh", RECV)]
        assert write_registers(conn, rows) == 1
        assert write_registers(conn, [*rows, (meter, "1.0.2.8.0.255", T0, 10.0, "Wh", RECV, 1)]) == 1
        stored = read_registers(conn, meter, T0, T0)
    assert [(r.obis, r.value, r.quality) for r in stored] == [("1.0.1.8.0.255", 12345.0, 0), ("1.0.2.8.0.255", 10.0, 1)]


def test_register_snapshots_new_and_re_read_in_one_batch(engine: Engine) -> None:
    """New snapshots take the bulk path, re-read ones are kept as they were; duplicates in a batch count once."""
    with engine.begin() as conn:
        meters = add_meters(conn, 3)
        first = [(m, "1.0.1.8.0.255", T0, 100.0 + m, "Wh", RECV) for m in meters]
        assert write_registers(conn, first) == 3
    later = [(m, "1.0.1.8.0.255", T0 + 86_400, 200.0 + m, "Wh", RECV) for m in meters]
    re_read = [(meters[0], "1.0.1.8.0.255", T0, 999.0, "Wh", RECV)]  # makes meter 0's pair "hot"
    duplicate = [(meters[1], "1.0.2.8.0.255", T0, 5.0, "Wh", RECV)] * 2
    with engine.begin() as conn:
        assert write_registers(conn, later + re_read + duplicate) == 4
    with engine.connect() as conn:
        records = [r for m in meters for r in read_registers(conn, m, 0, T0 * 2)]
    stored = {(r.meter_id, r.obis, r.captured_at): r.value for r in records}
    assert stored[(meters[0], "1.0.1.8.0.255", T0)] == 100.0 + meters[0]  # the re-read did not overwrite
    assert stored[(meters[1], "1.0.2.8.0.255", T0)] == 5.0
    assert all(stored[(m, "1.0.1.8.0.255", T0 + 86_400)] == 200.0 + m for m in meters)
    assert len(stored) == 7


def test_register_snapshots_of_an_unknown_meter_write_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        (meter,) = add_meters(conn, 1)
    rows = [(meter, "1.0.1.8.0.255", T0, 1.0, "Wh", RECV), (meter + 1000, "1.0.1.8.0.255", T0, 1.0, "Wh", RECV)]
    with pytest.raises(NotFound, match=str(meter + 1000)), engine.begin() as conn:
        write_registers(conn, rows)
    with engine.connect() as conn:
        assert read_registers(conn, meter, 0, T0 * 2) == []
