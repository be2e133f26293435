"""Revenue protection: cases and their history, meters to be watched, transformer check meters (issue 6).

Also ``premise_flags`` (vacant, registered generation) and ``energy_balances``. No foreign key to the
topology tables: a topology import replaces them whole and must not be blocked by these rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_OPEN_METER = "state <> 'closed' AND meter_id IS NOT NULL"
_OPEN_TRANSFORMER = "state <> 'closed' AND meter_id IS NULL"
_WATCH_OPEN = "cleared_at IS NULL AND meter_id IS NOT NULL"


def _partial_index(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(name, table, columns, unique=True, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def _check_meters_and_flags() -> None:
    op.create_table(
        "transformer_check_meters",
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("transformer_id", sa.String(32), nullable=False),
        sa.Column("registered_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", name="pk_transformer_check_meters"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_transformer_check_meters_meter_id_meters"),
    )
    op.create_index("ix_transformer_check_meters_transformer_id", "transformer_check_meters", ["transformer_id"])
    op.create_table(
        "premise_flags",
        sa.Column("premise_id", sa.String(32), nullable=False),
        sa.Column("vacant", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("vacant_since", UtcDateTime(), nullable=True),
        sa.Column("has_generation", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("premise_id", name="pk_premise_flags"),
    )


def _cases() -> None:
    op.create_table(
        "revenue_cases",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("meter_id", sa.Integer(), nullable=True),
        sa.Column("transformer_id", sa.String(32), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("summary", sa.String(255), nullable=False),
        sa.Column("assignee", sa.String(128), nullable=True),
        sa.Column("opened_by", sa.String(128), nullable=False),
        sa.Column("opened_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_revenue_cases"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_revenue_cases_meter_id_meters"),
    )
    op.create_index("ix_revenue_cases_state_id", "revenue_cases", ["state", "id"])
    op.create_index("ix_revenue_cases_meter_id", "revenue_cases", ["meter_id"])
    op.create_index("ix_revenue_cases_transformer_id", "revenue_cases", ["transformer_id"])
    _partial_index("uq_revenue_cases_open_meter", "revenue_cases", ["meter_id"], _OPEN_METER)
    _partial_index("uq_revenue_cases_open_transformer", "revenue_cases", ["transformer_id"], _OPEN_TRANSFORMER)
    op.create_table(
        "revenue_case_history",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("case_id", _ID, nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("evidence_key", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_revenue_case_history"),
        sa.ForeignKeyConstraint(
            ["case_id"], ["revenue_cases.id"], name="fk_revenue_case_history_case_id_revenue_cases"
        ),
    )
    op.create_index("ix_revenue_case_history_case_id_id", "revenue_case_history", ["case_id", "id"])
    op.create_index(
        "uq_revenue_case_history_evidence", "revenue_case_history", ["case_id", "evidence_key"], unique=True
    )


def _watch_and_balances() -> None:
    op.create_table(
        "revenue_watch",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("meter_id", sa.Integer(), nullable=True),
        sa.Column("transformer_id", sa.String(32), nullable=True),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("since", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        sa.Column("cleared_at", UtcDateTime(), nullable=True),
        sa.Column("case_id", _ID, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_revenue_watch"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_revenue_watch_meter_id_meters"),
        sa.ForeignKeyConstraint(["case_id"], ["revenue_cases.id"], name="fk_revenue_watch_case_id_revenue_cases"),
    )
    op.create_index("ix_revenue_watch_meter_id", "revenue_watch", ["meter_id"])
    op.create_index("ix_revenue_watch_transformer_id", "revenue_watch", ["transformer_id"])
    op.create_index("ix_revenue_watch_rule_id", "revenue_watch", ["rule", "id"])
    _partial_index("uq_revenue_watch_open", "revenue_watch", ["meter_id", "rule"], _WATCH_OPEN)
    op.create_table(
        "energy_balances",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("transformer_id", sa.String(32), nullable=False),
        sa.Column("check_meter_id", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.BigInteger(), nullable=False),
        sa.Column("period_end", sa.BigInteger(), nullable=False),
        sa.Column("intervals", sa.Integer(), nullable=False),
        sa.Column("meters", sa.Integer(), nullable=False),
        sa.Column("check_wh", sa.Float(53), nullable=False),
        sa.Column("meters_wh", sa.Float(53), nullable=False),
        sa.Column("loss_wh", sa.Float(53), nullable=False),
        sa.Column("loss_share", sa.Float(53), nullable=True),
        sa.Column("tolerance", sa.Float(53), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("suspects", sa.Text(), nullable=False),
        sa.Column("computed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_energy_balances"),
        sa.ForeignKeyConstraint(["check_meter_id"], ["meters.id"], name="fk_energy_balances_check_meter_id_meters"),
    )
    op.create_index("ix_energy_balances_transformer_id_period_end", "energy_balances", ["transformer_id", "period_end"])


def upgrade() -> None:
    _check_meters_and_flags()
    _cases()
    _watch_and_balances()


def downgrade() -> None:
    op.drop_table("energy_balances")
    op.drop_table("revenue_watch")
    op.drop_table("revenue_case_history")
    op.drop_table("revenue_cases")
    op.drop_table("premise_flags")
    op.drop_table("transformer_check_meters")
