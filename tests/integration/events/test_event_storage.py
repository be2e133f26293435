"""Event storage on SQLite and PostgreSQL: de-duplication, refusals with a reason, push counters, queries."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import meter_events as repo
from openami.db import tables as t
from openami.db.meter_events import EventRow
from openami.domain.meter_events import EventCategory, EventCode
from tests.integration.db.helpers import NOW, add_meters

NOW_S = NOW.timestamp()
T = int(NOW_S) - 600  # ten minutes ago on the meters' clocks


def _row(meter_id: int, code: EventCode = EventCode.POWER_DOWN, at: int = T, source: str = "push") -> EventRow:
    return EventRow(meter_id, int(code), at, NOW_S, source, None)


def _stored(engine: Engine) -> list[tuple[int, int, int, str]]:
    e = t.meter_events.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(e.meter_id, e.code, e.meter_time, e.source).order_by(e.id)).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_new_events_are_stored_and_duplicates_ignored(engine: Engine) -> None:
    with engine.begin() as conn:
        a, b = add_meters(conn, 2)
        first = repo.store_events(conn, [_row(a), _row(b), _row(a, EventCode.POWER_UP, T + 60)], now=NOW_S)
    assert [r.key for r in first.stored] == [(a, 1, T), (b, 1, T), (a, 2, T + 60)]
    assert first.duplicates == 0
    assert first.rejected == []
    with engine.begin() as conn:  # the same last gasp from the log, a retransmission, a copy within the batch
        again = repo.store_events(
            conn, [_row(a, source="log"), _row(a), _row(b, at=T + 1), _row(b, at=T + 1)], now=NOW_S
        )
    assert [r.key for r in again.stored] == [(b, 1, T + 1)]
    assert again.duplicates == 3
    stored = _stored(engine)
    assert len(stored) == 4
    assert (a, 1, T, "push") in stored  # the first arrival's provenance is kept


def test_category_and_value_are_stored(engine: Engine) -> None:
    with engine.begin() as conn:
        (a,) = add_meters(conn, 1)
        repo.store_events(conn, [EventRow(a, int(EventCode.VOLTAGE_SAG), T, NOW_S, "log", 187.5)], now=NOW_S)
        (record,) = repo.list_events(conn, meter_id=a)
    assert record.category == EventCategory.VOLTAGE
    assert record.value == 187.5
    assert record.source == "log"
    assert record.received_at == NOW_S


def test_impossible_events_are_refused_with_a_reason(engine: Engine) -> None:
    with engine.begin() as conn:
        (a,) = add_meters(conn, 1)
        outcome = repo.store_events(
            conn,
            [
                _row(a, at=int(NOW_S) + 7200),  # two hours in the future
                _row(a, at=900_000_000),  # 1998
                _row(a, at=int(NOW_S) - 30 * 86_400),  # a month before the meter was commissioned
                EventRow(a, 9999, T, NOW_S, "push", None),  # not an openami event code
                _row(987_654),  # no such meter
                _row(a, at=T - 1, source="carrier-pigeon"),
                _row(a),  # the one good event
            ],
            now=NOW_S,
        )
    assert [r.key for r in outcome.stored] == [(a, 1, T)]
    assert [r.reason for r in outcome.rejected] == [
        "future", "too-old", "too-old", "unknown-code", "unknown-meter", "bad-source",
    ]  # fmt: skip
    with engine.connect() as conn:
        assert repo.count_rejected(conn) == 6
        assert repo.count_rejected(conn, reason="unknown-meter") == 1
        assert repo.list_rejected(conn, limit=1)[0].reason == "bad-source"
    assert len(_stored(engine)) == 1


def test_a_batch_of_ten_thousand_is_stored_in_one_call(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = add_meters(conn, 100)
        rows = [_row(m, EventCode.POWER_DOWN, T - i) for m in ids for i in range(100)]
        outcome = repo.store_events(conn, rows + rows[:500], now=NOW_S)
    assert len(outcome.stored) == 10_000
    assert outcome.duplicates == 500
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.meter_events)).scalar_one() == 10_000


def test_queries_filter_by_meter_code_category_and_time(engine: Engine) -> None:
    with engine.begin() as conn:
        a, b = add_meters(conn, 2)
        repo.store_events(
            conn,
            [
                _row(a, EventCode.POWER_DOWN, T),
                _row(a, EventCode.POWER_UP, T + 60, source="log"),
                _row(b, EventCode.COVER_OPENED, T + 120),
            ],
            now=NOW_S,
        )
        assert [r.code for r in repo.list_events(conn)] == [40, 2, 1]  # newest meter time first
        assert [r.code for r in repo.list_events(conn, meter_id=a)] == [2, 1]
        assert [r.code for r in repo.list_events(conn, codes=[1, 40])] == [40, 1]
        assert [r.code for r in repo.list_events(conn, categories=[EventCategory.TAMPER])] == [40]
        assert [r.code for r in repo.list_events(conn, since=T + 1, until=T + 60)] == [2]
        assert [r.code for r in repo.list_events(conn, visible=t.meters.c.id == b)] == [40]
        assert repo.list_events(conn, limit=1)[0].code == 40
        assert repo.newest_log_times(conn, [a, b]) == {a: T + 60}


def test_push_counters_only_ever_go_up(engine: Engine) -> None:
    with engine.begin() as conn:
        a, b = add_meters(conn, 2)
        repo.advance_push_counters(conn, {(a, 1): 10, (b, 2): 5}, now=NOW_S)
        repo.advance_push_counters(conn, {(a, 1): 7, (b, 2): 6}, now=NOW_S)  # a batch that committed late
        assert repo.load_push_counters(conn) == {(a, 1): 10, (b, 2): 6}
