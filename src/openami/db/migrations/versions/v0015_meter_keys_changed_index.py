"""An index on ``meter_keys.state_changed_at``.

The push process looks every second whether a meter key changed (how many keys, and the latest
``state_changed_at``) to reload its targets. Without an index that read every key row: 20 ms at
200,000 keys (100,000 meters), about a sixth of the push process's CPU during a storm. With it both
answers come from the index (under 1 ms).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None

_INDEX = "ix_meter_keys_state_changed_at"


def upgrade() -> None:
    op.create_index(_INDEX, "meter_keys", ["state_changed_at"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="meter_keys")
