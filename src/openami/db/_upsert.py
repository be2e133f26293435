"""Dialect-neutral ``INSERT … ON CONFLICT`` for the low-volume tables (SQLite and PostgreSQL share the syntax)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def insert_on_conflict(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str] = (),
) -> int:
    """Insert ``rows``; on a ``key`` conflict update the ``update`` columns (or do nothing).

    Returns how many rows were inserted or updated (rows skipped by DO NOTHING are not counted).
    """
    if not rows:
        return 0
    stmt: Any = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)
    if update:
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_={c: stmt.excluded[c] for c in update})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    stmt = stmt.returning(*[table.c[name] for name in key])  # executemany rowcount is -1 on psycopg
    return len(conn.execute(stmt, list(rows)).all())
