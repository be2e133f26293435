"""Migrations apply on both databases; a database that is down at start is a clear StorageUnavailable."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openami.db.engine import create_engine
from openami.db.migrations import current_revision, head_revision, upgrade
from openami.db.tables import metadata
from openami.errors import InvalidInput, StorageUnavailable


def test_migrations_create_every_table_on_both_databases(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) is None
        upgrade(engine)
        upgrade(engine)  # idempotent
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            tables = set(sa.inspect(conn).get_table_names())
            channels = conn.execute(sa.text("SELECT code, obis, unit FROM channels ORDER BY code")).all()
    finally:
        engine.dispose()
    assert set(metadata.tables) <= tables
    assert [tuple(c) for c in channels] == [(1, "1.0.1.8.0.255", "Wh"), (2, "1.0.2.8.0.255", "Wh")]


def test_migration_matches_table_definitions(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_upgrade_by_url(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
    finally:
        engine.dispose()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'sub' / 'dir' / 'x.sqlite3'}")  # parents are created
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() > 0
    finally:
        engine.dispose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_postgres_down_at_start_is_storage_unavailable() -> None:
    url = f"postgresql://openami:s3cret-pw@127.0.0.1:{_closed_port()}/openami"
    with pytest.raises(StorageUnavailable) as caught:
        create_engine(url)
    message = caught.value.message
    assert "is unavailable" in message
    assert "127.0.0.1" in message
    assert "s3cret-pw" not in message
    assert caught.value.http_status == 503


def test_sqlite_unopenable_is_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory and not a database either, just some text in a file")
    with pytest.raises(StorageUnavailable, match="is unavailable"):
        create_engine(f"sqlite:///{blocker / 'db.sqlite3'}")
    with pytest.raises(StorageUnavailable, match="is unavailable"):
        create_engine(f"sqlite:///{tmp_path}")  # a directory, not a database file
    with pytest.raises(StorageUnavailable, match="not a database"):
        create_engine(f"sqlite:///{blocker}")  # a text file


def test_unsupported_url_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unsupported database URL"):
        create_engine("mysql://u:pw@localhost/db")
