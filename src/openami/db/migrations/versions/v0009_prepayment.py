"""Prepayment: tariffs, accounts, the immutable credit ledger, debited intervals, alerts (issue 5, services.prepay).

Triggers make ``prepay_ledger`` append-only inside the database, like the audit log (0003): UPDATE and
DELETE (and TRUNCATE on PostgreSQL) are refused; PostgreSQL reuses 0003's ``openami_append_only()``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "prepay_tariffs",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("price_per_kwh", sa.BigInteger(), nullable=False),
        sa.Column("standing_charge_per_day", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prepay_tariffs"),
        sa.UniqueConstraint("code", name="uq_prepay_tariffs_code"),
    )
    _accounts()
    _ledger()
    op.create_table(
        "prepay_debits",
        sa.Column("account_id", _ID, nullable=False, autoincrement=False),
        sa.Column("interval_end", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("energy_mwh", sa.BigInteger(), nullable=False),
        sa.Column("price_per_kwh", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", _ID, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "interval_end", name="pk_prepay_debits"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "prepay_alerts",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("raised_at", UtcDateTime(), nullable=False),
        sa.Column("cleared_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_prepay_alerts"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["prepay_accounts.id"], name="fk_prepay_alerts_account_id_prepay_accounts"
        ),
    )
    op.create_index("ix_prepay_alerts_account_id_raised_at", "prepay_alerts", ["account_id", "raised_at"])
    op.create_index("ix_prepay_alerts_raised_at", "prepay_alerts", ["raised_at"])
    _append_only_ledger()


def _accounts() -> None:
    op.create_table(
        "prepay_accounts",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("premise_id", sa.String(32), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("tariff_id", _ID, nullable=False),
        sa.Column("low_credit_threshold", sa.BigInteger(), nullable=False),
        sa.Column("friendly_hours", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("credit_state", sa.String(8), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("debit_from", sa.BigInteger(), nullable=False),
        sa.Column("debited_through", sa.BigInteger(), nullable=False),
        sa.Column("standing_through", sa.BigInteger(), nullable=False),
        sa.Column("last_command_id", sa.BigInteger(), nullable=True),
        sa.Column("last_switch_error", sa.String(255), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prepay_accounts"),
        sa.UniqueConstraint("meter_id", name="uq_prepay_accounts_meter_id"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_prepay_accounts_meter_id_meters"),
        sa.ForeignKeyConstraint(["premise_id"], ["premises.id"], name="fk_prepay_accounts_premise_id_premises"),
        sa.ForeignKeyConstraint(
            ["tariff_id"], ["prepay_tariffs.id"], name="fk_prepay_accounts_tariff_id_prepay_tariffs"
        ),
    )
    op.create_index("ix_prepay_accounts_premise_id", "prepay_accounts", ["premise_id"])


def _ledger() -> None:
    op.create_table(
        "prepay_ledger",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("energy_mwh", sa.BigInteger(), nullable=True),
        sa.Column("period_start", sa.BigInteger(), nullable=True),
        sa.Column("period_end", sa.BigInteger(), nullable=True),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prepay_ledger"),
        sa.UniqueConstraint("account_id", "seq", name="uq_prepay_ledger_account_id_seq"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_prepay_ledger_account_id_idempotency_key"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["prepay_accounts.id"], name="fk_prepay_ledger_account_id_prepay_accounts"
        ),
    )


def _append_only_ledger() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER prepay_ledger_append_only BEFORE UPDATE OR DELETE ON prepay_ledger "
            "FOR EACH ROW EXECUTE FUNCTION openami_append_only()"
        )
        op.execute(
            "CREATE TRIGGER prepay_ledger_no_truncate BEFORE TRUNCATE ON prepay_ledger "
            "FOR EACH STATEMENT EXECUTE FUNCTION openami_append_only()"
        )
        return
    for verb in ("update", "delete"):
        op.execute(
            f"CREATE TRIGGER prepay_ledger_no_{verb} BEFORE {verb.upper()} ON prepay_ledger "
            "BEGIN SELECT RAISE(ABORT, 'prepay_ledger is append-only'); END"
        )


def downgrade() -> None:
    op.drop_table("prepay_alerts")
    op.drop_table("prepay_debits")
    op.drop_table("prepay_ledger")  # its triggers go with it
    op.drop_table("prepay_accounts")
    op.drop_table("prepay_tariffs")
