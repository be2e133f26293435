"""Partial index on estimated interval values, so the scheduler finds each meter's oldest estimate at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_interval_readings_estimated",
        "interval_readings",
        ["meter_id", "interval_end"],
        sqlite_where=sa.text("source = 2"),
        postgresql_where=sa.text("source = 2"),
    )


def downgrade() -> None:
    op.drop_index("ix_interval_readings_estimated", table_name="interval_readings")
