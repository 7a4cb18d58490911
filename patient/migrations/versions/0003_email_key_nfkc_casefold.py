"""email_key becomes NFKC-normalised and case-folded, so look-alike emails are one key

Rows whose key changes are re-keyed in Python (SQLite's lower() knows only
ASCII). Where two existing patients' emails are look-alikes of each other,
the older patient gets the new key and the other keeps its old one (which
no new patient can take any more); the log names those patients by id.

Revision ID: 0003
Revises: 0002
"""

import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("patient.migrations")
KEY_LENGTH = 255
CHUNK = 500

patients = sa.table(
    "patients",
    sa.column("id", sa.Uuid()),
    sa.column("email", sa.String()),
    sa.column("email_key", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def nfkc_casefold(email):
    # pms_common.identity.email_key as of this revision, frozen here so the
    # migration means the same thing if that function changes.
    return unicodedata.normalize("NFKC", email).casefold()


def upgrade():
    rekey(nfkc_casefold)


def downgrade():
    rekey(str.lower)


def rekey(key_of):
    """Sets every row's email_key to key_of(email) unless another row (an
    unchanged one, or an older one) already has that key."""
    connection = op.get_bind()
    changed = []  # (id, current key, wanted key), oldest patient first
    result = connection.execute(
        sa.select(patients.c.id, patients.c.email, patients.c.email_key)
        .order_by(patients.c.created_at, patients.c.id)
        .execution_options(yield_per=10_000)
    )
    for row_id, email, current in result:
        wanted = key_of(email)[:KEY_LENGTH]
        if wanted != current:
            changed.append((row_id, current, wanted))
    if not changed:
        return

    changing = {row_id for row_id, _, _ in changed}
    wanted_keys = sorted({wanted for _, _, wanted in changed})
    taken = set()  # keys that rows which keep theirs hold, then keys given out
    for start in range(0, len(wanted_keys), CHUNK):
        taken.update(
            key
            for row_id, key in connection.execute(
                sa.select(patients.c.id, patients.c.email_key).where(
                    patients.c.email_key.in_(wanted_keys[start : start + CHUNK])
                )
            )
            if row_id not in changing
        )
    final, kept_old = {}, []
    for row_id, current, wanted in changed:
        if wanted not in taken:
            final[row_id] = wanted
            taken.add(wanted)
        else:
            kept_old.append((row_id, current))
    for row_id, current in kept_old:
        if current in taken:  # a winner now has it: make it unique by the row's id
            final[row_id] = f"{current[: KEY_LENGTH - 33]}#{row_id.hex}"
        taken.add(final.get(row_id, current))

    # Through a unique placeholder first, so no update collides with a key
    # that another row is about to give up.
    by_id = patients.c.id == sa.bindparam("row_id")
    set_key = sa.update(patients).where(by_id).values(email_key=sa.bindparam("new_key"))
    connection.execute(set_key, [{"row_id": row_id, "new_key": f"#rekey#{row_id.hex}"} for row_id in final])
    connection.execute(set_key, [{"row_id": row_id, "new_key": key} for row_id, key in final.items()])
    if kept_old:
        log.warning(
            "patients with look-alike emails kept their old email key; merge or correct them",
            extra={"patient_ids": [str(row_id) for row_id, _ in kept_old]},
        )
