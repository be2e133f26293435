"""Certificate authority: issued certificates (with their revocation) and the signed CRLs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from openami.db.tables import UtcDateTime

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pki_certificates",
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("profile", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("common_name", sa.String(64), nullable=False),
        sa.Column("not_before", UtcDateTime(), nullable=False),
        sa.Column("not_after", UtcDateTime(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("serial", name="pk_pki_certificates"),
        sa.UniqueConstraint("fingerprint", name="uq_pki_certificates_fingerprint"),
    )
    op.create_index("ix_pki_certificates_common_name", "pki_certificates", ["common_name"])
    op.create_table(
        "pki_crls",
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("this_update", UtcDateTime(), nullable=False),
        sa.Column("next_update", UtcDateTime(), nullable=False),
        sa.Column("revoked_count", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("number", name="pk_pki_crls"),
    )


def downgrade() -> None:
    op.drop_table("pki_crls")
    op.drop_index("ix_pki_certificates_common_name", table_name="pki_certificates")
    op.drop_table("pki_certificates")
