"""outbox trace context: the W3C traceparent of the request that wrote an event

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable, no default: adding it rewrites no row on PostgreSQL or SQLite.
    op.add_column("outbox_events", sa.Column("trace_context", sa.String(length=128), nullable=True))


def downgrade():
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("trace_context")
