"""Alembic migrations, run in code (no alembic.ini), so they work from an installed wheel.

``upgrade(target)`` brings a database to the newest schema; the platform calls it at start and the
test fixtures call it on every database they hand out. On PostgreSQL an advisory lock serialises
concurrent upgrades (two services starting at once).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, Engine

from openami.db.engine import create_engine

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade"]

_HERE = Path(__file__).resolve().parent
_UPGRADE_LOCK = 0x6F70656E616D69  # "openami": pg_advisory_xact_lock key


def alembic_config() -> Config:
    """An Alembic Config pointing at the scripts shipped inside this package."""
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    return config


def upgrade(target: Engine | Connection | str | URL, revision: str = "head") -> None:
    """Run ``alembic upgrade <revision>`` on an Engine, an open Connection or a URL.

    Raises StorageUnavailable (from engine creation) when a URL's database cannot be reached.
    """
    if isinstance(target, Connection):
        _upgrade_on(target, revision)
        return
    if isinstance(target, Engine):
        with target.begin() as conn:
            _upgrade_on(conn, revision)
        return
    engine = create_engine(target)
    try:
        with engine.begin() as conn:
            _upgrade_on(conn, revision)
    finally:
        engine.dispose()


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, or None for an empty database."""
    return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _upgrade_on(conn: Connection, revision: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)
