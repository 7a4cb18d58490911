"""index processed event ids by time, for forgetting old ones

Revision ID: 8c2f4e1a9b37
Revises: 5b1e0c7a2d41
Create Date: 2026-11-27 00:00:00

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "8c2f4e1a9b37"
down_revision = "5b1e0c7a2d41"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "ix_analytics_processed_events_processed_at", "analytics_processed_events", ["processed_at"]
    )


def downgrade():
    op.drop_index("ix_analytics_processed_events_processed_at", table_name="analytics_processed_events")
