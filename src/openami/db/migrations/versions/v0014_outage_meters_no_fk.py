"""Outage meters lose their foreign keys, like readings and register snapshots (ADR 0003).

A storm's decision writes every meter below each failed device: 54,000 rows for the benchmark's 133
feeders. On PostgreSQL each row's two key checks (an index lookup and a row lock on ``meters`` and on
``outages``) took half of that write (offline, durable cluster: 0.94-1.42 s with them, 0.46-0.66 s
without). The rows come only from ``db.outages``, written in the transaction that writes their
outage; meters and outages are never deleted. SQLite cannot drop a constraint in place, so the table
is copied (batch mode); its primary key and its ``meter_id`` index stay.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FKS = (
    ("fk_outage_meters_outage_id_outages", "outages", "outage_id"),
    ("fk_outage_meters_meter_id_meters", "meters", "meter_id"),
)


def _table(*, with_fks: bool) -> sa.Table:
    """The table as it stands before (with_fks) or after this migration, for SQLite's batch copy."""
    constraints: list[sa.Constraint] = [sa.PrimaryKeyConstraint("outage_id", "meter_id", name="pk_outage_meters")]
    if with_fks:
        constraints += [sa.ForeignKeyConstraint([column], [f"{table}.id"], name=name) for name, table, column in _FKS]
    return sa.Table(
        "outage_meters",
        sa.MetaData(),
        sa.Column(
            "outage_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=False
        ),
        sa.Column("meter_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_gasp", sa.Boolean(), nullable=False),
        sa.Column("premise_id", sa.String(32), nullable=True),
        sa.Column("critical_care", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("restored_at", UtcDateTime(), nullable=True),
        sa.Column("restored_by", sa.String(16), nullable=True),
        sa.Index("ix_outage_meters_meter_id", "meter_id"),
        *constraints,
    )


def _sqlite_copy(*, with_fks: bool) -> Any:
    return op.batch_alter_table("outage_meters", copy_from=_table(with_fks=with_fks), recreate="always")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, _table_name, _column in _FKS:
            op.drop_constraint(name, "outage_meters", type_="foreignkey")
        return
    with _sqlite_copy(with_fks=True) as batch:
        for name, _table_name, _column in _FKS:
            batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, column in _FKS:
            op.create_foreign_key(name, "outage_meters", table, [column], ["id"])
        return
    with _sqlite_copy(with_fks=False) as batch:
        for name, table, column in _FKS:
            batch.create_foreign_key(name, table, [column], ["id"])
