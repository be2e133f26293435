"""Migration 0011 creates exactly the tables of the "outages and webhooks" section (both databases)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openami.db.tables import metadata

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
