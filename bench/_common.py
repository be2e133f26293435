"""What several benchmarks share: a throw-away database of either kind, settings for command benchmarks."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from openami.settings import CollectionSettings, GuardSettings, PushSettings, Settings, SwitchSettings

UNLIMITED = 10_000_000


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


def command_bench_settings(tmp: Path, url: str, *, collection: CollectionSettings, push: PushSettings) -> Settings:
    """Settings for a benchmark that issues many disconnects: the guard's rate limits lifted (they
    would rightly stop them), the command queue looking every 0.2 s."""
    return Settings(
        data_dir=tmp,
        database_url=url,
        collection=collection,
        switch=SwitchSettings(poll_s=0.2),
        guard=GuardSettings(max_disconnects_fleet=UNLIMITED, max_disconnects_area=UNLIMITED),
        push=push,
    )
