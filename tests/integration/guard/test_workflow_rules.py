"""The workflows' refusals before anything reaches a meter, on SQLite and PostgreSQL: critical care, every
calendar rule, permissions; and which meters a load shed picks (critical care never)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import tables as t
from openami.db.meters import upsert_meters
from openami.domain.meters import MeterKind
from openami.errors import NotFound, PermissionDenied
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import disconnect_calendar as calendar
from openami.services import workflows
from openami.services.disconnect_calendar import CalendarEntry, CalendarRefused
from openami.services.switch import MeterHasNoSwitch
from openami.services.workflows import CriticalCareRefused, ShedTarget
from openami.settings import GuardSettings
from tests.integration.db.helpers import spec
from tests.integration.guard.helpers import NOW, Clock, Grid, billing, build_grid, operator, platform_on

CLERK, OPERATOR = billing("carol"), operator("olga")


@pytest.fixture
def grid(engine: Engine) -> Grid:
    return build_grid(engine)


def _denied_reasons(engine: Engine) -> list[str]:
    al = t.audit_log.c
    query = sa.select(al.details).where(al.action == "collections.disconnect", al.outcome == "denied")
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(al.seq)).scalars())


def test_non_payment_disconnect_is_never_for_critical_care(engine: Engine, tmp_path: Path, grid: Grid) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(), Clock())
    with pytest.raises(CriticalCareRefused, match="critical-care") as refused:
        workflows.start_non_payment(platform, CLERK, grid.critical)
    assert refused.value.http_status == 409
    assert "critical-care" in _denied_reasons(engine)[0]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.switch_workflows)).scalar_one() == 0
    workflow_id = workflows.start_non_payment(platform, CLERK, grid.s1[1])  # an ordinary premises: allowed
    assert workflows.get_workflow(platform, OPERATOR, workflow_id).state == "running"


CASES = [
    # (entry, a time it forbids, the rule named)
    (CalendarEntry(0, "hours", None, "evening peak", start_minute=16 * 60, end_minute=8 * 60),
     datetime(2026, 11, 25, 17, 0, tzinfo=UTC), "no-disconnect hours 16:00-08:00"),
    (CalendarEntry(0, "weekday", None, "weekend", weekday=5), datetime(2026, 11, 28, 10, 0, tzinfo=UTC),
     "no disconnects on Saturdays"),
    (CalendarEntry(0, "holiday", None, "Christmas", day=date(2026, 12, 25)), datetime(2026, 12, 25, 10, 0, tzinfo=UTC),
     "holiday 2026-12-25"),
    (CalendarEntry(0, "moratorium", "S1", "cold snap", starts_at=NOW, ends_at=datetime(2026, 11, 26, tzinfo=UTC)),
     datetime(2026, 11, 25, 13, 0, tzinfo=UTC), "moratorium until 2026-11-26T00:00+00:00 in area S1"),
]  # fmt: skip


@pytest.mark.parametrize(("entry", "forbidden_at", "rule"), CASES, ids=["hours", "weekend", "holiday", "moratorium"])
def test_every_calendar_rule_refuses_a_non_payment_disconnect_and_names_itself(
    engine: Engine, tmp_path: Path, grid: Grid, entry: CalendarEntry, forbidden_at: datetime, rule: str
) -> None:
    clock = Clock()
    platform = platform_on(engine, tmp_path, GuardSettings(), clock)
    with pytest.raises(PermissionDenied):
        calendar.add_entry(engine, CLERK, entry, now=clock())  # calendar.manage: operators
    added = calendar.add_entry(engine, OPERATOR, entry, now=clock())
    clock.at = forbidden_at
    with pytest.raises(CalendarRefused, match=re.escape(rule)) as refused:
        workflows.start_non_payment(platform, CLERK, grid.s1[1])
    assert f"calendar entry {added.id}: {entry.reason}" in refused.value.message
    assert rule in _denied_reasons(engine)[-1]
    if entry.area is not None:  # an area's moratorium leaves the other areas alone
        workflows.start_non_payment(platform, CLERK, grid.s2[1])
    calendar.remove_entry(engine, OPERATOR, added.id, now=clock())
    assert calendar.list_entries(engine, OPERATOR, now=clock()) == []
    workflows.start_non_payment(platform, CLERK, grid.s1[1])  # the rule is gone: allowed


def test_load_shed_spares_critical_care_and_respects_the_policy(engine: Engine, tmp_path: Path, grid: Grid) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(), Clock())
    workflow_id = workflows.start_shed(platform, OPERATOR, ShedTarget(area="S1"), mode="limit", threshold_w=1500,
                                       duration_s=900, reason="frequency low")  # fmt: skip
    shed = workflows.get_workflow(platform, OPERATOR, workflow_id)
    assert shed.parameters["meters"] == grid.s1[1:]
    assert shed.parameters["spared"] == [grid.critical]
    assert [(s.step, s.outcome) for s in shed.steps] == [("select", "ok")]
    with pytest.raises(PermissionDenied):
        workflows.start_shed(platform, CLERK, ShedTarget(area="S1"), mode="disconnect", reason="no")


def test_a_network_operator_sheds_only_in_its_own_area(engine: Engine, tmp_path: Path, grid: Grid) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(), Clock())
    dno = RequestScope("user:dno", frozenset({Role.NETWORK_OPERATOR}), frozenset({ALL_SCOPES}), area="S2")
    own = workflows.start_shed(platform, dno, ShedTarget(area="S2"), mode="disconnect", reason="feeder overload")
    assert workflows.get_workflow(platform, OPERATOR, own).parameters["meters"] == grid.s2
    with pytest.raises(PermissionDenied):
        workflows.start_shed(platform, dno, ShedTarget(area="S1"), mode="disconnect", reason="not mine")
    with pytest.raises(NotFound, match="out of reach"):
        workflows.start_shed(platform, dno, ShedTarget(meter_ids=(grid.s2[0], grid.s1[1])), mode="disconnect",
                             reason="one is not mine")  # fmt: skip


def test_a_gas_meter_has_no_switch_to_move_in(engine: Engine, tmp_path: Path, grid: Grid) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(), Clock())
    with engine.begin() as conn:
        gas = upsert_meters(conn, [spec(99, kind=MeterKind.GAS)], now=NOW)[spec(99).serial]
    with pytest.raises(MeterHasNoSwitch, match="gas meter"):
        workflows.start_move_in(platform, OPERATOR, gas)
    al = t.audit_log.c
    with engine.connect() as conn:
        denied = conn.execute(sa.select(al.details).where(al.action == "service.move-in", al.outcome == "denied"))
        assert "meter-has-no-switch" in denied.scalar_one()
