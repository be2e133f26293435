"""Meter events and alarms from pushes and event logs, de-duplicated (issue 6, headend.push_listener).

``meter_events`` (unique per meter, code and meter time), ``meter_events_rejected`` (what was refused
and why) and ``push_counters`` (the last accepted push invocation counter per meter and key version).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meter_events",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.SmallInteger(), nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("meter_time", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_meter_events"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_meter_events_meter_id_meters"),
        sa.UniqueConstraint("meter_id", "code", "meter_time", name="uq_meter_events_meter_id_code_meter_time"),
    )
    op.create_index("ix_meter_events_meter_time", "meter_events", ["meter_time"])
    op.create_index("ix_meter_events_category_meter_time", "meter_events", ["category", "meter_time"])
    op.create_table(
        "meter_events_rejected",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("meter_id", sa.Integer(), nullable=True),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("meter_time", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_meter_events_rejected"),
    )
    op.create_index("ix_meter_events_rejected_received_at", "meter_events_rejected", ["received_at"])
    op.create_table(
        "push_counters",
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("last_counter", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "key_version", name="pk_push_counters"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_push_counters_meter_id_meters"),
    )


def downgrade() -> None:
    op.drop_table("push_counters")
    op.drop_index("ix_meter_events_rejected_received_at", table_name="meter_events_rejected")
    op.drop_table("meter_events_rejected")
    op.drop_index("ix_meter_events_category_meter_time", table_name="meter_events")
    op.drop_index("ix_meter_events_meter_time", table_name="meter_events")
    op.drop_table("meter_events")
