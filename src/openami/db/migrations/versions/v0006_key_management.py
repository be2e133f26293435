"""Meter key versions (pending/active/retired), rotations, and invocation counters per key version.

Existing key rows become "active", except older versions of the same kind (superseded by a later
import), which become "retired"; existing counters are marked as belonging to the meter's newest GUEK
version.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_OPEN = "state IN ('queued', 'uncertain')"

_RETIRE_SUPERSEDED = """
UPDATE meter_keys SET state = 'retired'
WHERE key_version < (SELECT MAX(newer.key_version) FROM meter_keys AS newer
                     WHERE newer.meter_id = meter_keys.meter_id AND newer.key_kind = meter_keys.key_kind)
"""
_COUNTERS_TO_ACTIVE_GUEK = """
UPDATE invocation_counters SET key_version = COALESCE(
  (SELECT MAX(k.key_version) FROM meter_keys AS k
   WHERE k.meter_id = invocation_counters.meter_id AND k.key_kind = 'guek'), 1)
"""


def upgrade() -> None:
    op.add_column("meter_keys", sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'active'")))
    op.add_column("meter_keys", sa.Column("state_changed_at", UtcDateTime(), nullable=True))
    op.execute(_RETIRE_SUPERSEDED)
    op.add_column(
        "invocation_counters", sa.Column("key_version", sa.Integer(), nullable=False, server_default=sa.text("1"))
    )
    op.execute(_COUNTERS_TO_ACTIVE_GUEK)
    op.create_table(
        "key_rotations",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("target", sa.String(160), nullable=False),
        sa.Column("emergency", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_key_rotations"),
    )
    op.create_table(
        "meter_key_rotations",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("rotation_id", _ID, nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("guek_version", sa.Integer(), nullable=False),
        sa.Column("gak_version", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("transfer_sent_at", UtcDateTime(), nullable=True),
        sa.Column("settled_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_meter_key_rotations"),
        sa.ForeignKeyConstraint(
            ["rotation_id"], ["key_rotations.id"], name="fk_meter_key_rotations_rotation_id_key_rotations"
        ),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_meter_key_rotations_meter_id_meters"),
    )
    op.create_index("ix_meter_key_rotations_rotation_id", "meter_key_rotations", ["rotation_id"])
    op.create_index("ix_meter_key_rotations_meter_id_state", "meter_key_rotations", ["meter_id", "state"])
    op.create_index("ix_meter_key_rotations_state_priority", "meter_key_rotations", ["state", "priority"])
    op.create_index(
        "uq_meter_key_rotations_open",
        "meter_key_rotations",
        ["meter_id"],
        unique=True,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )


def downgrade() -> None:
    op.drop_index("uq_meter_key_rotations_open", table_name="meter_key_rotations")
    op.drop_index("ix_meter_key_rotations_state_priority", table_name="meter_key_rotations")
    op.drop_index("ix_meter_key_rotations_meter_id_state", table_name="meter_key_rotations")
    op.drop_index("ix_meter_key_rotations_rotation_id", table_name="meter_key_rotations")
    op.drop_table("meter_key_rotations")
    op.drop_table("key_rotations")
    with op.batch_alter_table("invocation_counters") as batch:
        batch.drop_column("key_version")
    op.execute("DELETE FROM meter_keys WHERE state = 'pending'")  # never proven in a meter
    with op.batch_alter_table("meter_keys") as batch:
        batch.drop_column("state_changed_at")
        batch.drop_column("state")
