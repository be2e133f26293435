"""Outages, their meters and notes, webhooks and their deliveries (issue 6, services.outage).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _zero() -> sa.TextClause:
    return sa.text("0")


def upgrade() -> None:
    op.create_table(
        "outages",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("device_kind", sa.String(16), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("area", sa.String(32), nullable=True),
        sa.Column("parent_id", _ID, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("detected_at", UtcDateTime(), nullable=False),
        sa.Column("restored_at", UtcDateTime(), nullable=True),
        sa.Column("verified_at", UtcDateTime(), nullable=True),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.Column("closed_by", sa.String(128), nullable=True),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("last_gasps", sa.Integer(), nullable=False),
        sa.Column("meters", sa.Integer(), nullable=False),
        sa.Column("premises", sa.Integer(), nullable=False),
        sa.Column("critical_care", sa.Integer(), nullable=False),
        sa.Column("pings_sent", sa.Integer(), nullable=False, server_default=_zero()),
        sa.Column("pings_answered", sa.Integer(), nullable=False, server_default=_zero()),
        sa.Column("still_dark", sa.Integer(), nullable=False, server_default=_zero()),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outages"),
        sa.ForeignKeyConstraint(["parent_id"], ["outages.id"], name="fk_outages_parent_id_outages"),
    )
    op.create_index("ix_outages_parent_id", "outages", ["parent_id"])
    op.create_index("ix_outages_state_started_at", "outages", ["state", "started_at"])
    op.create_index("ix_outages_device_kind_device_id_state", "outages", ["device_kind", "device_id", "state"])
    op.create_index("ix_outages_area_started_at", "outages", ["area", "started_at"])
    op.create_table(
        "outage_meters",
        sa.Column("outage_id", _ID, nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_gasp", sa.Boolean(), nullable=False),
        sa.Column("premise_id", sa.String(32), nullable=True),
        sa.Column("critical_care", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("restored_at", UtcDateTime(), nullable=True),
        sa.Column("restored_by", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("outage_id", "meter_id", name="pk_outage_meters"),
        sa.ForeignKeyConstraint(["outage_id"], ["outages.id"], name="fk_outage_meters_outage_id_outages"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_outage_meters_meter_id_meters"),
    )
    op.create_index("ix_outage_meters_meter_id", "outage_meters", ["meter_id"])
    op.create_table(
        "outage_notes",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("outage_id", _ID, nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("text", sa.String(1000), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outage_notes"),
        sa.ForeignKeyConstraint(["outage_id"], ["outages.id"], name="fk_outage_notes_outage_id_outages"),
    )
    op.create_index("ix_outage_notes_outage_id", "outage_notes", ["outage_id"])
    _create_webhooks()


def _create_webhooks() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("secret_wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("removed_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("webhook_id", _ID, nullable=False),
        sa.Column("outage_id", _ID, nullable=False),
        sa.Column("outage_version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=_zero()),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("delivered_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], name="fk_webhook_deliveries_webhook_id_webhooks"),
        sa.ForeignKeyConstraint(["outage_id"], ["outages.id"], name="fk_webhook_deliveries_outage_id_outages"),
        sa.UniqueConstraint(
            "webhook_id",
            "outage_id",
            "outage_version",
            name="uq_webhook_deliveries_webhook_id_outage_id_outage_version",
        ),
    )
    op.create_index("ix_webhook_deliveries_state_next_attempt_at", "webhook_deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_state_next_attempt_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_index("ix_outage_notes_outage_id", table_name="outage_notes")
    op.drop_table("outage_notes")
    op.drop_index("ix_outage_meters_meter_id", table_name="outage_meters")
    op.drop_table("outage_meters")
    for name in (
        "ix_outages_area_started_at", "ix_outages_device_kind_device_id_state", "ix_outages_state_started_at",
        "ix_outages_parent_id",
    ):  # fmt: skip
        op.drop_index(name, table_name="outages")
    op.drop_table("outages")
