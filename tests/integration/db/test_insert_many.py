"""``db.engine.insert_many``: the same rows and the same RETURNING on both databases (PostgreSQL: arrays)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db.engine import insert_many
from openami.db.tables import UtcDateTime

_metadata = sa.MetaData()
_sample = sa.Table(
    "insert_many_sample",
    _metadata,
    sa.Column("k", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(8), nullable=False),
    sa.Column("flag", sa.Boolean(), nullable=False),
    sa.Column("value", sa.Double(), nullable=True),
    sa.Column("at", UtcDateTime(), nullable=True),
)
_COLUMNS = ("k", "name", "flag", "value", "at")


def _rows(first: int, count: int) -> list[tuple[object, ...]]:
    at = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    # value: ints, floats and None in one column (an array's type must not follow its first element)
    return [
        (k, f"n{k % 7}", k % 2 == 0, [3, 2.5, None][k % 3], at if k % 4 == 0 else None)
        for k in range(first, first + count)
    ]


def test_rows_in_chunks_arrive_whole_with_every_type(engine: Engine) -> None:
    _metadata.create_all(engine)
    bind = _sample.c.at.type.bind_processor(engine.dialect)
    rows = [(*row[:4], bind(row[4]) if bind and row[4] is not None else row[4]) for row in _rows(0, 2_345)]
    with engine.begin() as conn:
        assert insert_many(conn, _sample, _COLUMNS, rows, per_statement=100) == []
    with engine.connect() as conn:
        stored = conn.execute(sa.select(_sample).order_by(_sample.c.k)).all()
    assert [tuple(r) for r in stored] == [tuple(r) for r in _rows(0, 2_345)]


def test_on_conflict_and_returning_give_only_what_was_inserted(engine: Engine) -> None:
    _metadata.create_all(engine)
    plain = [(*row[:4], None) for row in _rows(0, 50)]
    with engine.begin() as conn:
        insert_many(conn, _sample, _COLUMNS, plain[:20])
    then = "ON CONFLICT (k) DO NOTHING RETURNING k"
    with engine.begin() as conn:
        returned = insert_many(conn, _sample, _COLUMNS, plain, then=then, per_statement=7)
    assert sorted(k for (k,) in returned) == list(range(20, 50))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(_sample)).scalar_one() == 50
