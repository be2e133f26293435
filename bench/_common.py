"""What several benchmarks share: a throw-away database of either kind."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

import psycopg


@contextlib.contextmanager
def bench_database(kind: str, url: str | None) -> Iterator[str]:
    """A SQLAlchemy URL: a fresh SQLite file, the given PostgreSQL URL, or a private durable cluster.

    The private cluster is the test suite's (tests/pg.py), so the bench script must have the
    repository root on ``sys.path``.
    """
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="openami-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.sqlite3"
        return
    if url:
        yield url
        return
    from tests.pg import PostgresCluster  # noqa: PLC0415 - only when a private cluster is needed

    cluster = PostgresCluster.start(durable=True)
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE openami_bench")
        yield cluster.url("openami_bench")
    finally:
        cluster.stop()
