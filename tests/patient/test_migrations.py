"""Revision 0003 re-keys the patients already stored: their email_key becomes
NFKC-normalised and case-folded, as new writes make it, on both databases."""

import uuid
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from patient import MIGRATIONS_DIR
from patient.extensions import db
from patient.models import Patient
from pms_common.identity import email_key
from tests.patient.conftest import VALID

BEFORE = "0002"
# email as typed -> the key lower() gave it before 0003
STORED = [
    "ada@example.com",
    "Grace.Hopper@Example.com",
    "STRASSE@example.com",
    "\uff4c\uff49\uff4e\uff55\uff53@example.com",  # ｌｉｎｕｓ, alone: gets the new key
    "\u212aatherine@example.com",  # Kelvin sign K: lower() already made it k
    "Stra\u00dfe@example.com",  # a newer look-alike of STRASSE: keeps its old key
    "\uff21\uff24\uff21@example.com",
]  # ＡＤＡ, a newer look-alike of ada: keeps its old key


def insert_old_style(connection, emails):
    """Rows as the code before 0003 wrote them, the oldest first."""
    patients = Patient.__table__  # 0003 changes no column: the model's table is 0002's
    started = datetime(2024, 1, 1, tzinfo=UTC)
    ids = {}
    for index, email in enumerate(emails):
        ids[email] = uuid.uuid4()
        connection.execute(
            sa.insert(patients).values(
                id=ids[email],
                name=VALID["name"],
                email=email,
                email_key=email.lower(),
                address=VALID["address"],
                date_of_birth=date(1985, 12, 10),
                registered_date=date(2024, 5, 1),
                billing_status="ACTIVE",
                billing_attempts=0,
                created_at=started + timedelta(minutes=index),
                updated_at=started,
                version=1,
            )
        )
    return ids


def keys_by_email(connection):
    return dict(connection.execute(sa.text("SELECT email, email_key FROM patients")).all())


def test_upgrade_re_keys_existing_rows_and_downgrade_restores_them(make_app, caplog):
    app = make_app()
    with app.app_context():
        downgrade(directory=MIGRATIONS_DIR, revision=BEFORE)
        with db.engine.begin() as connection:
            ids = insert_old_style(connection, STORED)
        caplog.set_level("WARNING", logger="patient.migrations")
        upgrade(directory=MIGRATIONS_DIR)
        with db.engine.connect() as connection:
            keys = keys_by_email(connection)
        assert keys == {
            "ada@example.com": "ada@example.com",
            "Grace.Hopper@Example.com": "grace.hopper@example.com",
            "STRASSE@example.com": "strasse@example.com",
            "\uff4c\uff49\uff4e\uff55\uff53@example.com": "linus@example.com",
            "\u212aatherine@example.com": "katherine@example.com",
            "Stra\u00dfe@example.com": "stra\u00dfe@example.com",
            "\uff21\uff24\uff21@example.com": "\uff41\uff44\uff41@example.com",
        }
        kept = [record for record in caplog.records if "look-alike" in record.getMessage()]
        assert [sorted(record.patient_ids) for record in kept] == [
            sorted(str(ids[email]) for email in ("Stra\u00dfe@example.com", "\uff21\uff24\uff21@example.com"))
        ]
        assert all("@" not in str(record.__dict__) for record in kept)  # ids only, no emails

        downgrade(directory=MIGRATIONS_DIR, revision=BEFORE)
        with db.engine.connect() as connection:
            assert keys_by_email(connection) == {email: email.lower() for email in STORED}
        upgrade(directory=MIGRATIONS_DIR)


def test_after_the_upgrade_look_alikes_are_refused_and_found(make_app):
    app = make_app()
    with app.app_context():
        downgrade(directory=MIGRATIONS_DIR, revision=BEFORE)
        with db.engine.begin() as connection:
            ids = insert_old_style(connection, ["\uff4c\uff49\uff4e\uff55\uff53@example.com"])
        upgrade(directory=MIGRATIONS_DIR)
    client = app.test_client()
    assert client.post("/patients", json={**VALID, "email": "Linus@Example.com"}).status_code == 409
    found = client.get("/patients", query_string={"email": "LINUS@example.com"}).get_json()
    assert [p["id"] for p in found] == [str(ids["\uff4c\uff49\uff4e\uff55\uff53@example.com"])]
    assert email_key("Linus@Example.com") == "linus@example.com"
