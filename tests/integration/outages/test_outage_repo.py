"""Writing an outage as the engine does (rows prepared before the transaction) on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from openami.db import outages as repo
from openami.db.outages import AffectedMeter, NewOutage
from openami.domain.outages import DeviceKind, OutageState
from tests.integration.db.helpers import add_meters


def test_a_prepared_outage_reads_back_as_written_with_its_meters_and_record(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = add_meters(conn, 4)
    now = datetime(2026, 11, 23, 1, 2, 3, 456789, tzinfo=UTC)
    back = now - timedelta(seconds=7)
    meters = [
        AffectedMeter(ids[0], "dark", True, "P1", True),
        AffectedMeter(ids[1], "dark", False, "P1", False),
        AffectedMeter(ids[2], "restored", True, "P2", False, back, "push"),
        AffectedMeter(ids[3], "dark", False),  # outside the grid: no premise
    ]
    outage = NewOutage(DeviceKind.FEEDER, "SS1-F1", "SS1", OutageState.OPEN, now - timedelta(minutes=1), "last-gasps",
                       pings_sent=6, pings_answered=2)  # fmt: skip
    prepared = repo.prepare_outage(engine.dialect, outage, meters, now=now)
    with engine.begin() as conn:
        outage_id = repo.insert_prepared(conn, prepared)
    with engine.connect() as conn:
        stored = repo.get_outage(conn, outage_id)
        affected = repo.affected_meters(conn, outage_id)
    assert repo.prepared_record(prepared, outage_id) == stored
    assert (stored.meters, stored.premises, stored.critical_care, stored.last_gasps) == (4, 2, 1, 2)
    assert affected == sorted(meters)
