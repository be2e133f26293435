"""Investigation cases: the state machine, history and audit; tamper events open cases (once); the monitor
scans meters after their readings are stored. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.bus.topics import METER_EVENTS, READINGS_STORED
from openami.db import tables as t
from openami.domain.messages import ReadingCounts, ReadingsStored
from openami.domain.meter_events import EventCode, MeterEvent, MeterEvents
from openami.errors import InvalidInput, NotFound, PermissionDenied
from openami.services import revenue
from openami.services.bootstrap import stop_platform
from openami.services.revenue import IllegalTransition
from openami.services.revenue_engine import record_tamper_events
from tests.integration.revenue.helpers import (
    AUDITOR,
    END,
    INVESTIGATOR,
    OPERATOR,
    TECHNICIAN,
    fill,
    load_grid,
    platform_on,
    switch_command,
)
from tests.integration.revenue.helpers import NOW as T_NOW


def _audit(engine: Engine, resource: str) -> list[tuple[str, str, str]]:
    log = t.audit_log
    query = sa.select(log.c.actor, log.c.outcome, log.c.details).where(
        log.c.action == "cases.manage", log.c.resource == resource
    )
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query.order_by(log.c.seq))]


def test_case_moves_only_along_the_state_machine_with_history_and_audit(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    detail = revenue.open_case(platform, OPERATOR, meter_id=ids["OAM10000"], summary="seal broken on site visit")
    case_id = detail.case.id
    assert detail.case.state == "open"

    for illegal in ("closed", "confirmed-theft", "no-fault", "open"):
        with pytest.raises(IllegalTransition):
            revenue.move_case(platform, OPERATOR, case_id, illegal)
    with pytest.raises(InvalidInput):
        revenue.move_case(platform, OPERATOR, case_id, "solved")
    revenue.assign_case(platform, INVESTIGATOR, case_id, "inspector.jones")
    revenue.move_case(platform, INVESTIGATOR, case_id, "investigating", note="visit booked")
    revenue.add_note(platform, INVESTIGATOR, case_id, "magnet found behind the meter")
    revenue.move_case(platform, INVESTIGATOR, case_id, "confirmed-theft")
    with pytest.raises(IllegalTransition):
        revenue.move_case(platform, INVESTIGATOR, case_id, "no-fault")
    final = revenue.move_case(platform, INVESTIGATOR, case_id, "closed")

    assert final.case.state == "closed"
    assert final.case.closed_at is not None
    assert final.case.assignee == "inspector.jones"
    assert [(h.kind, h.from_state, h.to_state) for h in final.history] == [
        ("opened", None, "open"),
        ("assigned", None, None),
        ("state", "open", "investigating"),
        ("note", None, None),
        ("state", "investigating", "confirmed-theft"),
        ("state", "confirmed-theft", "closed"),
    ]
    assert final.history[2].text == "visit booked"
    audit = _audit(engine, f"case:{case_id}")
    assert [o for _, o, _ in audit].count("ok") == 6
    assert [o for _, o, _ in audit].count("failed") == 5  # every refused move is kept
    with pytest.raises(IllegalTransition):
        revenue.assign_case(platform, OPERATOR, case_id, "someone")
    # a closed case no longer blocks a new one for the meter
    again = revenue.open_case(platform, OPERATOR, meter_id=ids["OAM10000"], summary="again")
    assert again.case.id != case_id
    with pytest.raises(IllegalTransition):  # one open case per meter
        revenue.open_case(platform, OPERATOR, meter_id=ids["OAM10000"], summary="twice")


def test_cases_are_listed_filtered_and_only_for_allowed_roles(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    first = revenue.open_case(platform, OPERATOR, meter_id=ids["OAM10000"], summary="a").case
    second = revenue.open_case(platform, OPERATOR, transformer_id="SS01-F01-T002", summary="b").case
    revenue.move_case(platform, OPERATOR, second.id, "investigating")
    assert [c.id for c in revenue.list_cases(platform, TECHNICIAN)] == [first.id, second.id]
    assert [c.id for c in revenue.list_cases(platform, OPERATOR, state="investigating")] == [second.id]
    assert [c.id for c in revenue.list_cases(platform, OPERATOR, after_id=first.id)] == [second.id]
    assert revenue.get_case(platform, OPERATOR, first.id).case.summary == "a"
    with pytest.raises(PermissionDenied):
        revenue.list_cases(platform, AUDITOR)
    with pytest.raises(PermissionDenied):  # a field technician sees cases but does not move them
        revenue.move_case(platform, TECHNICIAN, first.id, "investigating")
    with pytest.raises(NotFound):
        revenue.get_case(platform, OPERATOR, 999_999)
    with pytest.raises(NotFound):
        revenue.open_case(platform, OPERATOR, meter_id=999_999, summary="x")
    with pytest.raises(InvalidInput):
        revenue.list_cases(platform, OPERATOR, state="nonsense")


def _event(meter_id: int, code: EventCode, minute: int, source: str = "push") -> MeterEvent:
    return MeterEvent(meter_id, code, END - 3600 + 60 * minute, float(END), source)


async def test_tamper_events_open_one_case_per_meter_and_duplicates_add_nothing(engine: Engine, tmp_path: Path) -> None:
    platform = platform_on(engine, tmp_path)
    ids = load_grid(platform)
    tampered, other, quiet = ids["OAM10000"], ids["OAM10001"], ids["OAM10002"]
    revenue.start(platform)
    try:
        cover = _event(tampered, EventCode.COVER_OPENED, 1)
        await platform.bus.publish(METER_EVENTS, MeterEvents((cover, _event(quiet, EventCode.POWER_DOWN, 1))))
        await platform.bus.publish(METER_EVENTS, MeterEvents((cover,)))  # redelivered
        await platform.bus.publish(METER_EVENTS, MeterEvents((_event(tampered, EventCode.COVER_OPENED, 1, "log"),)))
        await platform.bus.publish(METER_EVENTS, MeterEvents((_event(tampered, EventCode.MAGNETIC_FIELD, 5),)))
        await platform.bus.publish(METER_EVENTS, MeterEvents((_event(other, EventCode.COVER_CLOSED, 2),)))
        await platform.bus.publish(METER_EVENTS, MeterEvents((_event(other, EventCode.METER_REMOVED, 3),)))
        await platform.bus.drain()
    finally:
        await stop_platform(platform)

    platform = platform_on(engine, tmp_path)
    again = record_tamper_events(engine, [cover, _event(tampered, EventCode.MAGNETIC_FIELD, 5)], now=T_NOW)
    assert again == {"opened": 0, "evidence": 0}  # a redelivery changes nothing (and does not fail)
    other_case = revenue.list_cases(platform, OPERATOR, meter_id=other)[0].id
    for state in ("investigating", "no-fault", "closed"):
        revenue.move_case(platform, OPERATOR, other_case, state)
    late = record_tamper_events(engine, [_event(other, EventCode.METER_REMOVED, 3)], now=T_NOW)
    assert late == {"opened": 0, "evidence": 0}  # an old event redelivered after its case closed: no new case
    fresh = record_tamper_events(engine, [_event(other, EventCode.METER_REMOVED, 30)], now=T_NOW)
    assert fresh == {"opened": 1, "evidence": 1}  # a new event after closing: a new case
    cases = {c.meter_id: c for c in revenue.list_cases(platform, OPERATOR, reason="tamper", state="open")}
    assert set(cases) == {tampered, other}  # a power event or a closing cover opens nothing
    assert cases[tampered].reason == "tamper"
    history = revenue.get_case(platform, OPERATOR, cases[tampered].id).history
    assert [h.kind for h in history] == ["opened", "evidence", "evidence"]  # cover once, magnetic once
    assert "magnetic field" in (history[2].text or "")
    assert [h.kind for h in revenue.get_case(platform, OPERATOR, cases[other].id).history] == ["opened", "evidence"]
    assert any(o == "ok" for _, o, _ in _audit(engine, f"case:{cases[tampered].id}"))


@pytest.mark.parametrize(("delay", "max_wait"), [(0.0, 900.0), (3600.0, 0.0)], ids=["quiet", "busy"])
async def test_the_monitor_scans_meters_after_their_readings_are_stored(
    engine: Engine, tmp_path: Path, delay: float, max_wait: float
) -> None:
    """After ``scan_delay_s`` of quiet, or at the latest ``scan_max_wait_s`` after the first stored read."""
    platform = platform_on(engine, tmp_path, scan_delay_s=delay, scan_max_wait_s=max_wait)
    ids = load_grid(platform)
    meter = ids["OAM10000"]
    switch_command(engine, meter, "disconnect", T_NOW.replace(day=20))
    fill(engine, meter, END - 2 * 86_400, END, 50.0)
    revenue.start(platform)
    assert platform.revenue is not None
    try:
        await platform.bus.publish(READINGS_STORED, ReadingsStored(meter, ReadingCounts(), END - 900, END))
        deadline = asyncio.get_running_loop().time() + 20
        while platform.revenue.scans < 1:  # poll with a deadline: the scan runs in a thread
            assert asyncio.get_running_loop().time() < deadline, "no scan ran"
            await asyncio.sleep(0.05)
        watch = revenue.watch_list(platform, OPERATOR, rule="consumption-while-disconnected")
        assert [w.meter_id for w in watch] == [meter]
    finally:
        await stop_platform(platform)
