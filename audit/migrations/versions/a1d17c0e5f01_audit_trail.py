"""audit trail: entries (a hash chain), its head, the collector's log
positions, and triggers that refuse changing or deleting entries

Revision ID: a1d17c0e5f01
Revises:
Create Date: 2026-12-02 00:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "a1d17c0e5f01"
down_revision = None
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64
REFUSED = "audit entries are append-only"

# An entry is never updated; one is deleted only once the archive step has
# moved the head's anchor past it (python -m audit archive). The head's
# anchor only moves forward. Whoever connects as the service's user meets
# these, whatever its grants.
POSTGRES_TRIGGERS = [
    f"""
    CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' AND OLD.id <= (SELECT archived_through_id FROM audit_chain_head WHERE id = 1) THEN
        RETURN OLD;
      END IF;
      RAISE EXCEPTION '{REFUSED}' USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """
    CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()
    """,
    f"""
    CREATE FUNCTION audit_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION '{REFUSED}' USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """
    CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate()
    """,
    """
    CREATE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.last_id < OLD.last_id OR NEW.archived_through_id < OLD.archived_through_id
         OR NEW.archived_through_id > NEW.last_id THEN
        RAISE EXCEPTION 'the audit chain head only moves forward' USING ERRCODE = 'insufficient_privilege';
      END IF;
      RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER audit_chain_head_forward_only BEFORE UPDATE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only()
    """,
    """
    CREATE TRIGGER audit_chain_head_kept BEFORE DELETE OR TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate()
    """,
]
SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries
    BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END
    """,
    f"""
    CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries
    WHEN OLD.id > (SELECT archived_through_id FROM audit_chain_head WHERE id = 1)
    BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END
    """,
    """
    CREATE TRIGGER audit_chain_head_forward_only BEFORE UPDATE ON audit_chain_head
    WHEN NEW.last_id < OLD.last_id OR NEW.archived_through_id < OLD.archived_through_id
         OR NEW.archived_through_id > NEW.last_id
    BEGIN SELECT RAISE(ABORT, 'the audit chain head only moves forward'); END
    """,
    """
    CREATE TRIGGER audit_chain_head_kept BEFORE DELETE ON audit_chain_head
    BEGIN SELECT RAISE(ABORT, 'the audit chain head only moves forward'); END
    """,
]


def upgrade():
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.Column("actor_role", sa.String(length=16), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.Column("fields", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source"),
    )
    for column in ("time", "actor", "action", "patient_id"):
        op.create_index(f"ix_audit_entries_{column}", "audit_entries", [column])
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("archived_through_id", sa.BigInteger(), nullable=False),
        sa.Column("archived_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # The one row appends lock; made here so no append races to insert it.
    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "last_id": 0,
                "last_hash": GENESIS_HASH,
                "archived_through_id": 0,
                "archived_hash": GENESIS_HASH,
            }
        ],
    )
    op.create_table(
        "audit_log_positions",
        sa.Column("log", sa.String(length=200), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("log"),
    )
    triggers = POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_chain_head_kept ON audit_chain_head")
        op.execute("DROP TRIGGER audit_chain_head_forward_only ON audit_chain_head")
        op.execute("DROP TRIGGER audit_entries_no_truncate ON audit_entries")
        op.execute("DROP TRIGGER audit_entries_append_only ON audit_entries")
        op.execute("DROP FUNCTION audit_head_forward_only()")
        op.execute("DROP FUNCTION audit_refuse_truncate()")
        op.execute("DROP FUNCTION audit_refuse_change()")
    op.drop_table("audit_log_positions")
    op.drop_table("audit_chain_head")
    op.drop_table("audit_entries")
