"""Off-switch guard: approvals, uncommanded-opening alarms, ignore-disconnects mode, disconnect calendar (issue 5).

Also the switch workflows (move-in, move-out, non-payment, reinstatement, shedding, limits) and their steps.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id(table: str) -> tuple[sa.Column[int], sa.PrimaryKeyConstraint]:
    return sa.Column("id", _ID, nullable=False, autoincrement=True), sa.PrimaryKeyConstraint("id", name=f"pk_{table}")


def _guard_tables() -> None:
    op.create_table(
        "guard_disconnects",
        *_id("guard_disconnects"),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("area", sa.String(32), nullable=True),
        sa.Column("admitted_at", UtcDateTime(), nullable=False),
        sa.Column("batch_id", _ID, nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_guard_disconnects_meter_id_meters"),
    )
    op.create_index("ix_guard_disconnects_admitted_at", "guard_disconnects", ["admitted_at"])
    op.create_index("ix_guard_disconnects_area_admitted_at", "guard_disconnects", ["area", "admitted_at"])
    op.create_table(
        "guard_batches",
        *_id("guard_batches"),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("meter_count", sa.Integer(), nullable=False),
        sa.Column("meter_ids", sa.Text(), nullable=False),
        sa.Column("areas", sa.String(255), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", UtcDateTime(), nullable=True),
        sa.Column("note", sa.String(255), nullable=True),
    )
    op.create_index("ix_guard_batches_state", "guard_batches", ["state"])
    op.create_table(
        "guard_alarms",
        *_id("guard_alarms"),
        sa.Column("area", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", UtcDateTime(), nullable=False),
        sa.Column("openings", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("ignore_disconnects_sent", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("cleared_by", sa.String(128), nullable=True),
        sa.Column("cleared_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_guard_alarms_area_state", "guard_alarms", ["area", "state"])
    op.create_table(
        "guard_openings",
        *_id("guard_openings"),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("area", sa.String(32), nullable=True),
        sa.Column("meter_time", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", UtcDateTime(), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=True),
        sa.Column("uncommanded", sa.Boolean(), nullable=False),
        sa.Column("alarm_id", _ID, nullable=True),
        sa.ForeignKeyConstraint(["alarm_id"], ["guard_alarms.id"], name="fk_guard_openings_alarm_id_guard_alarms"),
        sa.UniqueConstraint("meter_id", "meter_time", name="uq_guard_openings_meter_id_meter_time"),
    )
    op.create_index("ix_guard_openings_area_uncommanded_seen_at", "guard_openings", ["area", "uncommanded", "seen_at"])
    op.create_table(
        "guard_area_modes",
        sa.Column("area", sa.String(32), nullable=False),
        sa.Column("ignore_disconnects", sa.Boolean(), nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("alarm_id", _ID, nullable=True),
        sa.PrimaryKeyConstraint("area", name="pk_guard_area_modes"),
        sa.ForeignKeyConstraint(["alarm_id"], ["guard_alarms.id"], name="fk_guard_area_modes_alarm_id_guard_alarms"),
    )


def _calendar_and_workflow_tables() -> None:
    op.create_table(
        "disconnect_calendar",
        *_id("disconnect_calendar"),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("area", sa.String(32), nullable=True),
        sa.Column("start_minute", sa.SmallInteger(), nullable=True),
        sa.Column("end_minute", sa.SmallInteger(), nullable=True),
        sa.Column("weekday", sa.SmallInteger(), nullable=True),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("starts_at", UtcDateTime(), nullable=True),
        sa.Column("ends_at", UtcDateTime(), nullable=True),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "switch_workflows",
        *_id("switch_workflows"),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=True),
        sa.Column("target", sa.String(160), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("failure_step", sa.String(32), nullable=True),
        sa.Column("failure_reason", sa.String(500), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_switch_workflows_state", "switch_workflows", ["state"])
    op.create_index("ix_switch_workflows_meter_id", "switch_workflows", ["meter_id"])
    op.create_table(
        "switch_workflow_steps",
        *_id("switch_workflow_steps"),
        sa.Column("workflow_id", _ID, nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.Column("command_id", sa.BigInteger(), nullable=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["switch_workflows.id"], name="fk_switch_workflow_steps_workflow_id_switch_workflows"
        ),
    )
    op.create_index("ix_switch_workflow_steps_workflow_id", "switch_workflow_steps", ["workflow_id"])


def upgrade() -> None:
    _guard_tables()
    _calendar_and_workflow_tables()


def downgrade() -> None:
    for table in ("switch_workflow_steps", "switch_workflows", "disconnect_calendar", "guard_area_modes",
                  "guard_openings", "guard_alarms", "guard_batches", "guard_disconnects"):  # fmt: skip
        op.drop_table(table)
