"""Meter-side security failures become security events (and, in a burst, an alert), audited in the
same transaction as the communication error: a meter that is not the one the platform knows (its
system title differs) and a replayed invocation counter, against simulated meters over TCP.

(A wrong key on the platform's side makes the meter reject the association: that is the meter's
verdict on us, recorded as a communication error, not a meter-side security failure.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from openami.db import comm_errors, counters
from openami.db import meters as meter_repo
from openami.security import audit, events
from openami.security.keystore import master_key_provider
from openami.services.bootstrap import build_platform, stop_platform
from openami.services.meters import import_commissioning
from openami.settings import CollectionSettings, Settings
from openami.sim.runner import FleetHandle


def _impostor(meter: dict[str, Any]) -> None:
    """The platform expects another system title: whoever answers at that address is not the meter."""
    meter["system_title"] = "4F414D" + "FFFFFFFFFF"


def _as_is(_meter: dict[str, Any]) -> None:
    pass


async def _collect_victim(
    engine: Engine, tmp_path: Path, commissioning: dict[str, Any], fleet: FleetHandle,
    tamper: Callable[[dict[str, Any]], None], *, rounds: int, replayed: bool = False,
) -> int:  # fmt: skip
    document = copy.deepcopy(commissioning)
    victim = next(
        m for m in document["meters"] if not any(f.serial == m["serial"] and f.fault for f in fleet.fleet.meters)
    )
    tamper(victim)
    settings = Settings(data_dir=tmp_path, collection=CollectionSettings(retries=0, timeout_s=2.0, catch_up_days=1))
    import_commissioning(engine, master_key_provider(settings), document, now=datetime.now(UTC))
    with engine.begin() as conn:
        meter_id = meter_repo.meter_ids_by_serial(conn, [victim["serial"]])[victim["serial"]]
        if replayed:  # the head-end already accepted a far higher counter from "this meter": its answers are replays
            counters.advance(conn, meter_id, now=datetime.now(UTC), server_ic_last=2**31)
    platform = build_platform(settings, engine=engine)
    try:
        for _ in range(rounds):
            await platform.collector.collect([meter_id])
    finally:
        await stop_platform(platform)
    return meter_id


@pytest.mark.parametrize(
    ("tamper", "replayed", "kind"),
    [(_impostor, False, "meter.hls-failed"), (_as_is, True, "meter.replay")],
)
async def test_meter_security_failures_are_events_with_their_audit_entries(
    engine: Engine,
    tmp_path: Path,
    commissioning: dict[str, Any],
    fleet: FleetHandle,
    tamper: Callable[[dict[str, Any]], None],
    replayed: bool,
    kind: str,
) -> None:
    meter_id = await _collect_victim(engine, tmp_path, commissioning, fleet, tamper, rounds=1, replayed=replayed)
    with engine.connect() as conn:
        errors = comm_errors.list_comm_errors(conn, meter_id=meter_id)
        found = events.list_events(conn, meter_id=meter_id)
        entries = audit.query(conn, action="security.event", resource=f"meter:{meter_id}")
    assert len(errors) == 1, errors
    assert [e.kind for e in found] == [kind]
    assert found[0].details == {"step": errors[0].step}
    assert [e.seq for e in entries] == [found[0].audit_seq]
    assert entries[0].details["kind"] == kind


async def test_repeated_identity_failures_of_one_meter_open_one_alert(
    engine: Engine, tmp_path: Path, commissioning: dict[str, Any], fleet: FleetHandle
) -> None:
    meter_id = await _collect_victim(engine, tmp_path, commissioning, fleet, _impostor, rounds=4)
    with engine.connect() as conn:
        (alert,) = events.list_alerts(conn)
        assert len(events.list_events(conn, meter_id=meter_id)) == 4
    assert (alert.kind, alert.scope, alert.event_count, alert.state) == (
        "meter.hls-failed",
        f"meter:{meter_id}",
        4,
        "open",
    )
