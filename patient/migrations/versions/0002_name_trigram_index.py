"""name search index for PostgreSQL (trigram), so a name filter stays fast at millions of rows

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # SQLite keeps the plain lower(name) index from 0001; a substring search
    # there scans, which is fine at a laptop's scale.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_patients_name_trgm ON patients USING gin (lower(name) gin_trgm_ops)"
    )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_patients_name_trgm")
