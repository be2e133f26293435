"""A simulated fleet in worker processes for the end-to-end tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openami.sim.fleet import FleetConfig
from openami.sim.runner import FleetHandle, start_fleet_processes


@pytest.fixture
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetHandle]:
    """60 meters (some flaky, some drifting) on their own 127.x.y.z addresses, in two processes.

    One fleet per test: a meter remembers the highest invocation counter each client used, so a
    test starting from an empty database needs meters that have not met another test's head-end.
    """
    path = tmp_path_factory.mktemp("fleet") / "commissioning.json"
    # port 0: each meter on its own 127.x.y.z address with a port the OS picks, so that another fleet on
    # this machine (a developer's `make run`, a parallel test run) cannot collide with this one
    config = FleetConfig(meters=60, seed=11, flaky_fraction=0.05, drift_fraction=0.05, days=10, port=0)
    handle = start_fleet_processes(config, processes=2, commissioning_path=path)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def commissioning(fleet: FleetHandle) -> dict[str, Any]:
    assert fleet.commissioning_path is not None
    return json.loads(Path(fleet.commissioning_path).read_text(encoding="utf-8"))
