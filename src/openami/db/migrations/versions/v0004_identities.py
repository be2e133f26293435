"""Operator accounts, roles and role assignments, token ownership.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(column: str, target: str, table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [target], name=f"fk_{table}_{column}_{target.split('.', maxsplit=1)[0]}")


def _accounts() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("locked_until", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_login_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("username", name="uq_accounts_username"),
    )
    op.create_table(
        "account_roles",
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("area", sa.String(32), nullable=True),
        sa.Column("granted_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "role", name="pk_account_roles"),
        _fk("account_id", "accounts.id", "account_roles"),
        _fk("area", "substations.id", "account_roles"),
    )
    op.create_table(
        "account_premises",
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("premise_id", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "premise_id", name="pk_account_premises"),
        _fk("account_id", "accounts.id", "account_premises"),
        _fk("premise_id", "premises.id", "account_premises"),
    )


def _credentials() -> None:
    op.create_table(
        "account_tokens",
        sa.Column("token_id", _ID, nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.PrimaryKeyConstraint("token_id", name="pk_account_tokens"),
        _fk("token_id", "api_tokens.id", "account_tokens"),
        _fk("account_id", "accounts.id", "account_tokens"),
    )
    op.create_index("ix_account_tokens_account_id", "account_tokens", ["account_id"])
    op.create_table(
        "system_clients",
        sa.Column("id", _ID, nullable=False, autoincrement=True),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("subject_cn", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_system_clients"),
        sa.UniqueConstraint("fingerprint", name="uq_system_clients_fingerprint"),
        _fk("account_id", "accounts.id", "system_clients"),
    )
    op.create_index("ix_system_clients_account_id", "system_clients", ["account_id"])


def upgrade() -> None:
    _accounts()
    _credentials()


def downgrade() -> None:
    for table in ("system_clients", "account_tokens", "account_premises", "account_roles", "accounts"):
        op.drop_table(table)
