"""Register snapshots lose their foreign key to meters, like interval readings (ADR 0003).

On PostgreSQL the key check ran one lookup (and a row lock on ``meters``) per snapshot, about 40 % of
writing a batch; ``write_registers`` now checks each batch's meters with one query and refuses the
whole batch with NotFound before writing anything. Meters are never deleted. SQLite cannot drop a
constraint in place, so the table is copied (batch mode), keeping WITHOUT ROWID.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None

_FK = "fk_register_snapshots_meter_id_meters"


def _table(*, with_fk: bool) -> sa.Table:
    """The table as it stands before (with_fk) or after this migration, for SQLite's batch copy."""
    constraints: list[sa.Constraint] = [
        sa.PrimaryKeyConstraint("meter_id", "obis", "captured_at", name="pk_register_snapshots")
    ]
    if with_fk:
        constraints.append(sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=_FK))
    return sa.Table(
        "register_snapshots",
        sa.MetaData(),
        sa.Column("meter_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("obis", sa.String(32), nullable=False),
        sa.Column("captured_at", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("quality", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        *constraints,
        sqlite_with_rowid=False,
    )


def _sqlite_copy(*, with_fk: bool) -> Any:
    """SQLite's batch mode: the table copied from its definition as it stands, keeping WITHOUT ROWID."""
    return op.batch_alter_table(
        "register_snapshots", copy_from=_table(with_fk=with_fk), recreate="always",
        table_kwargs={"sqlite_with_rowid": False},
    )  # fmt: skip


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_FK, "register_snapshots", type_="foreignkey")
        return
    with _sqlite_copy(with_fk=True) as batch:
        batch.drop_constraint(_FK, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(_FK, "register_snapshots", "meters", ["meter_id"], ["id"])
        return
    with _sqlite_copy(with_fk=False) as batch:
        batch.create_foreign_key(_FK, "meters", ["meter_id"], ["id"])
