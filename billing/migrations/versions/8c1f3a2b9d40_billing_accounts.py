"""billing accounts

Revision ID: 8c1f3a2b9d40
Revises:
Create Date: 2025-01-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "8c1f3a2b9d40"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "billing_accounts",
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('ACTIVE', 'CLOSED')", name=op.f("ck_billing_accounts_status")),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_billing_accounts")),
        sa.UniqueConstraint("patient_id", name=op.f("uq_billing_accounts_patient_id")),
    )


def downgrade():
    op.drop_table("billing_accounts")
