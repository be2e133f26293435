"""``openami guard`` and ``openami calendar`` on both databases: the two-person rule at the console too."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from openami.cli.guard import calendar, guard
from openami.cli.workflows import workflow
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import switch
from openami.services.switch import CommandRequest, LimitParameters
from openami.settings import GuardSettings
from tests.integration.guard.helpers import Clock, Grid, build_grid, operator, platform_on


@pytest.fixture
def grid(engine: Engine) -> Grid:
    return build_grid(engine)


@pytest.fixture
def run(db_url: str, tmp_path: Path) -> Callable[..., Result]:
    env = {"OPENAMI_DATABASE_URL": db_url, "OPENAMI_DATA_DIR": str(tmp_path), "COLUMNS": "200"}

    def invoke(group: object, *args: str) -> Result:
        return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)  # type: ignore[arg-type]

    return invoke


def test_calendar_commands(run: Callable[..., Result], grid: Grid) -> None:
    added = run(calendar, "add", "--kind", "hours", "--start", "16:00", "--end", "08:00", "--reason", "evening peak")
    assert added.exit_code == 0, added.output
    assert "no-disconnect hours 16:00-08:00" in added.output
    weekend = run(calendar, "add", "--kind", "weekday", "--weekday", "6", "--area", "S1", "--reason", "Sundays")
    assert weekend.exit_code == 0, weekend.output
    listed = run(calendar, "list")
    assert "no disconnects on Sundays" in listed.output
    assert "evening peak" in listed.output
    half = run(calendar, "add", "--kind", "hours", "--start", "16:00", "--reason", "half")
    assert half.exit_code == 1
    assert "exactly start_minute, end_minute" in half.output
    assert run(calendar, "remove", "1").exit_code == 0
    assert run(calendar, "remove", "1").exit_code == 1


def test_guard_commands_keep_the_two_person_rule(
    run: Callable[..., Result], grid: Grid, engine: Engine, tmp_path: Path
) -> None:
    platform = platform_on(engine, tmp_path, GuardSettings(approval_batch_size=3), Clock())
    console = RequestScope(f"cli:{getpass.getuser()}", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
    disconnects = [CommandRequest(m, "disconnect", reason="cli test") for m in grid.s2[:4]]
    theirs = switch.submit_batch(platform, operator("alice"), disconnects)
    limit = LimitParameters(2000, 600, False)
    limits = [CommandRequest(m, "limit", limit=limit, reason="cli test") for m in grid.s2[:4]]
    mine = switch.submit_batch(platform, console, limits)
    pending = run(guard, "batches")
    assert pending.exit_code == 0, pending.output
    assert "user:alice" in pending.output
    refused = run(guard, "approve", str(mine[0].batch_id))
    assert refused.exit_code == 1
    assert "two-person rule" in refused.output
    approved = run(guard, "approve", str(theirs[0].batch_id))
    assert approved.exit_code == 0, approved.output
    assert f"approved by cli:{getpass.getuser()}: 4 disconnect commands queued" in approved.output

    on = run(guard, "ignore-disconnects", "S1", "--reason", "storm")
    assert on.exit_code == 0, on.output
    assert "queued for 6 meters" in on.output
    assert "S1" in run(guard, "areas").output
    cleared = run(guard, "clear", "S1")
    assert cleared.exit_code == 0, cleared.output
    assert run(guard, "clear", "S1").exit_code == 1  # not in the mode any more
    assert run(guard, "alarms").exit_code == 0


def test_workflow_commands_refuse_before_starting_anything(run: Callable[..., Result], grid: Grid) -> None:
    refused = run(workflow, "non-payment", "--meter", str(grid.critical))
    assert refused.exit_code == 2
    assert "critical-care" in refused.output
    unknown = run(workflow, "show", "4242")
    assert unknown.exit_code == 1
    assert "no workflow 4242" in unknown.output
