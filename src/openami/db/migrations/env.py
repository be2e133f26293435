"""Alembic environment: always online, on the connection ``openami.db.migrations.upgrade`` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from openami.db.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise TypeError("run migrations through openami.db.migrations.upgrade(), which passes a connection")
_run(_connection)
