"""phone, gender and medical record number; indexes for search by birth date and by record number

Every patient already stored gets a record number of the form new patients
get (MRN- and ten Crockford base32 characters), unique across the table.

Revision ID: 0005
Revises: 0004
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHUNK = 5_000
# patient.records.new_record_number as of this revision, frozen here so the
# migration means the same thing if that function changes.
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

patients = sa.table(
    "patients",
    sa.column("id", sa.Uuid()),
    sa.column("medical_record_number", sa.String()),
)


def new_record_number():
    return "MRN-" + "".join(secrets.choice(CROCKFORD) for _ in range(10))


def upgrade():
    op.add_column("patients", sa.Column("phone", sa.String(32), nullable=True))
    op.add_column("patients", sa.Column("gender", sa.String(16), nullable=True))
    op.add_column("patients", sa.Column("medical_record_number", sa.String(32), nullable=True))
    backfill_record_numbers()
    op.create_index("ix_patients_date_of_birth", "patients", ["date_of_birth"])
    op.create_index("ix_patients_medical_record_number", "patients", ["medical_record_number"], unique=True)


def downgrade():
    op.drop_index("ix_patients_medical_record_number", table_name="patients")
    op.drop_index("ix_patients_date_of_birth", table_name="patients")
    # A plain DROP COLUMN on both (SQLite has it since 3.35): a batch copy of
    # the table would lose the expression index on lower(name).
    for column in ("medical_record_number", "gender", "phone"):
        op.drop_column("patients", column)


def backfill_record_numbers():
    """Numbers drawn here are kept apart from each other in Python; the table
    has none yet, so no drawn number can meet a stored one."""
    connection = op.get_bind()
    ids = connection.scalars(sa.select(patients.c.id)).all()
    given = set()
    set_number = (
        sa.update(patients)
        .where(patients.c.id == sa.bindparam("row_id"))
        .values(medical_record_number=sa.bindparam("number"))
    )
    for start in range(0, len(ids), CHUNK):
        rows = []
        for row_id in ids[start : start + CHUNK]:
            number = new_record_number()
            while number in given:
                number = new_record_number()
            given.add(number)
            rows.append({"row_id": row_id, "number": number})
        connection.execute(set_number, rows)
