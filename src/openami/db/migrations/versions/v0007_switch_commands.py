"""Signed switch and limiter commands, the command authority's counter, idempotency keys (issue 5, services.switch).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "command_authorities",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_command_authorities"),
        sa.UniqueConstraint("serial", name="uq_command_authorities_serial"),
        sa.UniqueConstraint("fingerprint", name="uq_command_authorities_fingerprint"),
    )
    counter = op.create_table(
        "authority_counter",
        sa.Column("id", sa.SmallInteger(), nullable=False, autoincrement=False),
        sa.Column("last_counter", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_authority_counter"),
    )
    op.bulk_insert(counter, [{"id": 1, "last_counter": 0}])
    op.create_table(
        "switch_commands",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("threshold_w", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Integer(), nullable=True),
        sa.Column("emergency", sa.Boolean(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("execute_at", UtcDateTime(), nullable=False),
        sa.Column("not_after", UtcDateTime(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=True),
        sa.Column("workflow", sa.String(32), nullable=True),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("failure_reason", sa.String(255), nullable=True),
        sa.Column("refusal", sa.String(32), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("queued_at", UtcDateTime(), nullable=True),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.Column("confirmed_at", UtcDateTime(), nullable=True),
        sa.Column("failed_at", UtcDateTime(), nullable=True),
        sa.Column("expired_at", UtcDateTime(), nullable=True),
        sa.Column("cancelled_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("output_state", sa.Boolean(), nullable=True),
        sa.Column("control_state", sa.SmallInteger(), nullable=True),
        sa.Column("voltage_v", sa.Float(), nullable=True),
        sa.Column("current_a", sa.Float(), nullable=True),
        sa.Column("load_side_voltage_v", sa.Float(), nullable=True),
        sa.Column("active_threshold_w", sa.Integer(), nullable=True),
        sa.Column("final_import_wh", sa.Float(), nullable=True),
        sa.Column("final_export_wh", sa.Float(), nullable=True),
        sa.Column("final_read_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_switch_commands"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_switch_commands_meter_id_meters"),
        sa.UniqueConstraint("counter", name="uq_switch_commands_counter"),
    )
    op.create_index("ix_switch_commands_meter_id_status", "switch_commands", ["meter_id", "status"])
    op.create_index("ix_switch_commands_status_next_attempt_at", "switch_commands", ["status", "next_attempt_at"])
    op.create_index("ix_switch_commands_batch_id", "switch_commands", ["batch_id"])
    op.create_index(
        "ix_switch_commands_requested_by_idempotency_key",
        "switch_commands",
        ["requested_by", "idempotency_key"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ix_switch_commands_requested_by_idempotency_key", table_name="switch_commands")
    op.drop_index("ix_switch_commands_batch_id", table_name="switch_commands")
    op.drop_index("ix_switch_commands_status_next_attempt_at", table_name="switch_commands")
    op.drop_index("ix_switch_commands_meter_id_status", table_name="switch_commands")
    op.drop_table("switch_commands")
    op.drop_table("authority_counter")
    op.drop_table("command_authorities")
