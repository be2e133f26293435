"""A small grid for the guard and workflow tests: two areas, one critical-care premises."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import tables as t
from openami.db.meters import upsert_meters
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services.bootstrap import build_platform
from openami.services.context import Platform
from openami.settings import GuardSettings, Settings
from tests.integration.db.helpers import spec

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday, noon UTC


def operator(name: str) -> RequestScope:
    return RequestScope(principal=f"user:{name}", roles=frozenset({Role.AMI_OPERATOR}), scopes=frozenset({ALL_SCOPES}))


def billing(name: str) -> RequestScope:
    return RequestScope(principal=f"user:{name}", roles=frozenset({Role.BILLING_CIS}), scopes=frozenset({ALL_SCOPES}))


SECURITY = RequestScope(principal="user:sec", roles=frozenset({Role.SECURITY_ADMIN}), scopes=frozenset({ALL_SCOPES}))


@dataclass(frozen=True)
class Grid:
    """Meter ids by area; ``critical`` is the one meter at a critical-care premises (in area S1)."""

    s1: list[int]
    s2: list[int]
    critical: int


def build_grid(engine: Engine, per_area: int = 6) -> Grid:
    """Areas S1 and S2, one feeder and transformer each, ``per_area`` meters each; S1's first is critical care."""
    with engine.begin() as conn:
        for area in ("S1", "S2"):
            conn.execute(sa.insert(t.substations).values(id=area, name=f"substation {area}"))
            conn.execute(sa.insert(t.feeders).values(id=f"{area}-F1", substation_id=area))
            conn.execute(sa.insert(t.transformers).values(id=f"{area}-T1", feeder_id=f"{area}-F1", phase="A"))
        specs = []
        for n in range(1, 2 * per_area + 1):
            area = "S1" if n <= per_area else "S2"
            conn.execute(sa.insert(t.premises).values(id=f"P{n}", address=f"{n} Grid Street", critical_care=n == 1))
            conn.execute(sa.insert(t.service_points).values(id=f"SP{n}", premise_id=f"P{n}",
                                                            transformer_id=f"{area}-T1", phase="A"))  # fmt: skip
            specs.append(spec(n, service_point_id=f"SP{n}"))
        ids = upsert_meters(conn, specs, now=NOW)
    ordered = [ids[s.serial] for s in specs]
    return Grid(s1=ordered[:per_area], s2=ordered[per_area:], critical=ordered[0])


class Clock:
    """A settable clock for the platform (``advance`` moves it)."""

    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def platform_on(engine: Engine, tmp_path: Path, guard: GuardSettings, clock: Clock) -> Platform:
    """A platform (not started: no queue, commands stay queued) with the given guard settings and clock."""
    return build_platform(Settings(data_dir=tmp_path, guard=guard), engine=engine, now=clock)
