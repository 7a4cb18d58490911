"""outbox wakes the relay: on PostgreSQL, a commit that wrote an event notifies `patient_outbox`

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Once per statement, not per row; PostgreSQL delivers it at commit, and only
# one of a transaction's identical notifications (patient.outbox OUTBOX_CHANNEL).
NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION patient_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('patient_outbox', '');
    RETURN NULL;
END
$$
"""


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's writers wake the relay themselves (patient.outbox.wake_the_relay)
    op.execute(NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION patient_outbox_notify()"
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events")
    op.execute("DROP FUNCTION IF EXISTS patient_outbox_notify()")
