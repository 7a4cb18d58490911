"""users: disabled, token generation and kept token; emails re-keyed (NFKC, case-folded)

An email whose key another user already holds (look-alikes that the old
lower-casing kept apart) stays as it was and its user is disabled: nobody
gets into another's account, and an admin sees both in the user list.

Revision ID: 0002
Revises: 0001
"""

import logging

import sqlalchemy as sa
from alembic import op

from pms_common.identity import email_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
users = sa.table("users", sa.column("id"), sa.column("email"), sa.column("disabled"), sa.column("created_at"))


def upgrade():
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("token_generation", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("kept_jti", sa.String(length=64), nullable=True))
    rekey_emails(op.get_bind())


def rekey_emails(connection):
    rows = connection.execute(
        sa.select(users.c.id, users.c.email).order_by(users.c.created_at, users.c.id)
    ).all()
    taken = {email for _id, email in rows if email_key(email) == email}
    for user_id, email in rows:
        key = email_key(email)
        if key == email:
            continue
        if key in taken:
            connection.execute(sa.update(users).where(users.c.id == user_id).values(disabled=True))
            log.warning("user disabled: another user has the same email key", extra={"user_id": str(user_id)})
            continue
        taken.add(key)
        connection.execute(sa.update(users).where(users.c.id == user_id).values(email=key))


def downgrade():
    # Keys stay as they are: the old code compares lower-cased emails, which keys already are.
    with op.batch_alter_table("users") as batch:
        batch.drop_column("kept_jti")
        batch.drop_column("token_generation")
        batch.drop_column("disabled")
