"""analytics store: summary, registrations per month, patient states,
processed event ids, consumer heartbeat

Revision ID: 5b1e0c7a2d41
Revises:
Create Date: 2025-01-01 00:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "5b1e0c7a2d41"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    summary = op.create_table(
        "analytics_summary",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patients_created", sa.BigInteger(), nullable=False),
        sa.Column("patients_updated", sa.BigInteger(), nullable=False),
        sa.Column("patients_deleted", sa.BigInteger(), nullable=False),
        sa.Column("active_patients", sa.BigInteger(), nullable=False),
        sa.Column("events_processed", sa.BigInteger(), nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # The one row the consumer adds to; created here so it never races to insert it.
    op.bulk_insert(
        summary,
        [
            {
                "id": 1,
                "patients_created": 0,
                "patients_updated": 0,
                "patients_deleted": 0,
                "active_patients": 0,
                "events_processed": 0,
                "last_event_at": None,
            }
        ],
    )
    op.create_table(
        "analytics_registrations",
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("month"),
    )
    op.create_table(
        "analytics_patients",
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("registered_month", sa.String(length=7), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    op.create_table(
        "analytics_processed_events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_table(
        "analytics_consumer_status",
        sa.Column("group_id", sa.String(length=200), nullable=False),
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("group_id"),
    )


def downgrade():
    op.drop_table("analytics_consumer_status")
    op.drop_table("analytics_processed_events")
    op.drop_table("analytics_patients")
    op.drop_table("analytics_registrations")
    op.drop_table("analytics_summary")
