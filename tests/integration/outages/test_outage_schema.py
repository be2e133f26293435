"""Migration 0011 creates exactly the tables of the "outages and webhooks" section, and 0014 drops the
affected meters' foreign keys keeping their rows (both databases)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openami.db import outages as repo
from openami.db.engine import create_engine
from openami.db.migrations import alembic_config, upgrade
from openami.db.outages import AffectedMeter, NewOutage
from openami.db.tables import metadata
from openami.domain.outages import DeviceKind, OutageState
from tests.integration.db.helpers import NOW, add_meters

OWN = {"outages", "outage_meters", "outage_notes", "webhooks", "webhook_deliveries"}


def _table_of(item: Any) -> str | None:
    """The table a compare_metadata difference is about (modifications come as a list of tuples)."""
    if isinstance(item, list):
        return _table_of(item[0])
    for part in item[1:]:
        if isinstance(part, sa.Table):
            return part.name
        table = getattr(part, "table", None)
        if isinstance(table, sa.Table):
            return table.name
    return str(item[2]) if len(item) > 2 else None


def test_migration_0011_matches_the_outage_and_webhook_tables(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [d for d in compare_metadata(context, metadata) if _table_of(d) in OWN]
    assert diff == []
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) >= OWN


def test_migration_0014_drops_the_outage_meters_keys_keeping_their_rows_and_downgrades(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        upgrade(engine, "0013")
        with engine.begin() as conn:
            meters = add_meters(conn, 3)
            affected = [AffectedMeter(m, "dark", m == meters[0], f"P{m}", m == meters[1]) for m in meters]
            outage = NewOutage(DeviceKind.TRANSFORMER, "T1", "SS1", OutageState.OPEN, NOW, "last-gasps")
            outage_id = repo.insert_outage(conn, outage, affected, now=NOW)
        assert _keys(engine) == {"meters", "outages"}
        upgrade(engine)
        assert _keys(engine) == set()
        with engine.connect() as conn:
            assert repo.affected_meters(conn, outage_id) == affected  # every row, as it was
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0013")
        assert _keys(engine) == {"meters", "outages"}
        with engine.connect() as conn:
            assert repo.affected_meters(conn, outage_id) == affected
        upgrade(engine)
        assert _keys(engine) == set()
    finally:
        engine.dispose()


def _keys(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {key["referred_table"] for key in sa.inspect(conn).get_foreign_keys("outage_meters")}
