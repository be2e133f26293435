"""Suite-wide fixtures: databases on SQLite and on a real, private PostgreSQL.

Use them like this::

    def test_something(engine):            # runs twice: [sqlite] and [postgres]
        with engine.begin() as conn:
            ...

    def test_platform_on(db_url):          # a URL instead, e.g. for a subprocess or your own engine
        ...

Fixtures (function scope unless said):

- ``db_kind``: ``"sqlite"`` or ``"postgres"``; every test that uses any fixture below is
  parametrized over both, and the PostgreSQL case carries the ``postgres`` marker
  (``pytest -m "not postgres"`` deselects it for a quick local run; CI runs both).
- ``db_url``: URL of a fresh database already migrated to the newest revision, private to the
  test: a file in ``tmp_path`` on SQLite, a new database cloned from a migrated template on
  PostgreSQL (dropped after the test).
- ``engine``: an ``openami.db.engine.create_engine`` Engine on ``db_url`` after ``upgrade``; disposed
  after the test.
- ``empty_db_url``: like ``db_url`` but with no schema at all (for migration tests).
- ``pg_cluster`` (session): the one PostgreSQL cluster of the session (``tests/pg.py``), started on
  first use on a free loopback port and stopped at the end. It gives ``.url(dbname)``, ``.dsn(dbname)``.

When the PostgreSQL server binaries are missing, the PostgreSQL cases FAIL with a message that says
what to install (``bash scripts/ensure-postgres.sh``): a CI without PostgreSQL must not pass silently.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import Engine

from openami.db.engine import create_engine
from openami.db.migrations import upgrade
from tests.pg import PostgresCluster, PostgresUnavailable

_TEMPLATE_DB = "openami_template"
_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    problem = None
    try:
        cluster = PostgresCluster.start()
    except PostgresUnavailable as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(f"PostgreSQL is required for the [postgres] tests: {problem}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def _admin(cluster: PostgresCluster, *statements: str) -> None:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # database names below are ours (t_<n>), never user input


@pytest.fixture(scope="session")
def _pg_template(pg_cluster: PostgresCluster) -> str:
    _admin(pg_cluster, f"CREATE DATABASE {_TEMPLATE_DB}")
    upgrade(pg_cluster.url(_TEMPLATE_DB))
    return _TEMPLATE_DB


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "openami.sqlite3"
    engine = create_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _fresh_pg_database(request: pytest.FixtureRequest, template: str | None) -> str:
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = f"t_{next(_db_numbers)}"
    source = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
    _admin(cluster, f"CREATE DATABASE {name}{source}")
    request.addfinalizer(lambda: _admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    return cluster.url(name)


@pytest.fixture
def db_url(db_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if db_kind == "postgres":
        return _fresh_pg_database(request, request.getfixturevalue("_pg_template"))
    template: Path = request.getfixturevalue("_sqlite_template")
    path = tmp_path / "openami.sqlite3"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def empty_db_url(db_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if db_kind == "postgres":
        return _fresh_pg_database(request, None)
    return f"sqlite:///{tmp_path / 'empty.sqlite3'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine(db_url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
