"""The clinic fields (phone, gender, medical record number) on the REST API,
search by birth date and by record number, and the migration that adds them."""

import re
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from patient import MIGRATIONS_DIR
from patient.extensions import db
from patient.models import OutboxEvent, Patient
from tests.patient.conftest import VALID

RECORD_NUMBER = re.compile(r"^MRN-[0-9A-HJKMNP-TV-Z]{10}$")
BEFORE = "0004"

# The patients table as revision 0004 left it.
patients_0004 = sa.table(
    "patients",
    *(
        Patient.__table__.c[name]._copy()
        for name in (
            "id",
            "name",
            "email",
            "email_key",
            "address",
            "date_of_birth",
            "registered_date",
            "billing_status",
            "billing_attempts",
            "created_at",
            "updated_at",
            "version",
        )
    ),
)


def insert_before_0005(connection, count):
    now = datetime(2024, 1, 1, tzinfo=UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    connection.execute(
        sa.insert(patients_0004),
        [
            {
                "id": row_id,
                "name": f"Patient {index}",
                "email": f"old{index}@example.com",
                "email_key": f"old{index}@example.com",
                "address": "Somewhere",
                "date_of_birth": date(1980, 1, 1),
                "registered_date": date(2020, 1, 1),
                "billing_status": "ACTIVE",
                "billing_attempts": 0,
                "created_at": now,
                "updated_at": now,
                "version": 1,
            }
            for index, row_id in enumerate(ids)
        ],
    )
    return ids


def index_names(connection):
    """The indexes SQLAlchemy reflects (on SQLite, not those on an expression)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        return {index["name"]: index for index in sa.inspect(connection).get_indexes("patients")}


def all_index_names(connection):
    """Expression indexes included, which SQLite's reflection leaves out."""
    if connection.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'patients'"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE tablename = 'patients'"
    return set(connection.scalars(sa.text(query)))


def test_migration_backfills_unique_record_numbers_and_indexes_both_searches(make_app):
    app = make_app()
    with app.app_context():
        downgrade(directory=MIGRATIONS_DIR, revision=BEFORE)
        with db.engine.connect() as connection:
            columns = {column["name"] for column in sa.inspect(connection).get_columns("patients")}
            assert not columns & {"phone", "gender", "medical_record_number"}
        with db.engine.begin() as connection:
            ids = insert_before_0005(connection, 120)
        upgrade(directory=MIGRATIONS_DIR)
        with db.engine.connect() as connection:
            numbers = dict(
                connection.execute(sa.text("SELECT id, medical_record_number FROM patients")).all()
            )
            indexes = index_names(connection)
            assert "ix_patients_name_lower" in all_index_names(connection)
        assert len(numbers) == len(ids)
        assert all(RECORD_NUMBER.match(number) for number in numbers.values())
        assert len(set(numbers.values())) == len(ids)
        assert indexes["ix_patients_medical_record_number"]["unique"]
        assert indexes["ix_patients_medical_record_number"]["column_names"] == ["medical_record_number"]
        assert indexes["ix_patients_date_of_birth"]["column_names"] == ["date_of_birth"]

        downgrade(directory=MIGRATIONS_DIR, revision=BEFORE)
        with db.engine.connect() as connection:
            assert "ix_patients_name_lower" in all_index_names(connection)
            assert connection.scalar(sa.text("SELECT count(*) FROM patients")) == len(ids)
        upgrade(directory=MIGRATIONS_DIR)


# --- the REST API ------------------------------------------------------------

ORIGINAL_FIELDS = ["id", "name", "email", "address", "dateOfBirth", "registeredDate"]


def test_a_client_of_the_original_is_served_as_before(client, create):
    created = create()
    assert created.status_code == 201
    body = created.get_json()
    # The original's fields keep their names, values and order; the new ones follow.
    assert list(body)[: len(ORIGINAL_FIELDS)] == ORIGINAL_FIELDS
    assert {key: body[key] for key in ORIGINAL_FIELDS[1:]} == {
        **{key: VALID[key] for key in ORIGINAL_FIELDS[1:]},
        "email": body["email"],
    }
    assert body["phone"] is None and body["gender"] is None
    assert RECORD_NUMBER.match(body["medicalRecordNumber"])
    # An update that never names the new fields keeps them.
    url = f"/patients/{body['id']}"
    client.put(url, json={"phone": "+1 (555) 010-4477", "gender": "other", **without_id(body)})
    update = {key: body[key] for key in ("name", "email", "address", "dateOfBirth")}
    updated = client.put(url, json={**update, "name": "Renamed"}).get_json()
    assert (updated["name"], updated["phone"], updated["gender"]) == ("Renamed", "+1 (555) 010-4477", "other")
    assert updated["medicalRecordNumber"] == body["medicalRecordNumber"]


def without_id(body):
    return {
        key: body[key]
        for key in ("name", "email", "address", "dateOfBirth", "registeredDate", "medicalRecordNumber")
    }


def test_new_fields_are_stored_and_cleared(client, create):
    body = create(phone="+44 20 7946 0958", gender="female", medicalRecordNumber="H-42").get_json()
    assert (body["phone"], body["gender"], body["medicalRecordNumber"]) == (
        "+44 20 7946 0958",
        "female",
        "H-42",
    )
    url = f"/patients/{body['id']}"
    cleared = client.put(url, json={**without_id(body), "phone": None, "gender": None}).get_json()
    assert (cleared["phone"], cleared["gender"], cleared["medicalRecordNumber"]) == (None, None, "H-42")
    renumbered = client.put(url, json={**without_id(body), "medicalRecordNumber": "H-43"}).get_json()
    assert renumbered["medicalRecordNumber"] == "H-43"
    assert client.get(url).get_json()["medicalRecordNumber"] == "H-43"


@pytest.mark.parametrize(
    "field, value",
    [
        ("phone", "call me"),
        ("phone", "12"),
        ("phone", ""),
        ("phone", "1" * 33),
        ("gender", "F"),
        ("gender", ""),
        ("medicalRecordNumber", ""),
        ("medicalRecordNumber", " MRN"),
        ("medicalRecordNumber", "M" * 33),
        ("medicalRecordNumber", None),
    ],
)
def test_bad_new_fields_are_422_naming_the_field(create, field, value):
    refused = create(**{field: value})
    assert refused.status_code == 422
    assert list(refused.get_json()["errors"]["json"]) == [field]


def test_a_taken_record_number_is_409(client, create):
    first = create(medicalRecordNumber="H-1").get_json()
    refused = create(medicalRecordNumber="H-1")
    assert refused.status_code == 409
    assert list(refused.get_json()["errors"]["json"]) == ["medicalRecordNumber"]
    second = create().get_json()
    moved = client.put(
        f"/patients/{second['id']}",
        json={**without_id(second), "medicalRecordNumber": first["medicalRecordNumber"]},
    )
    assert moved.status_code == 409
    assert list(moved.get_json()["errors"]["json"]) == ["medicalRecordNumber"]


def test_an_assigned_number_another_patient_has_is_drawn_again(app, client, create, monkeypatch):
    """50 random bits do not repeat in a test: the draw is made to repeat a taken number once."""
    from patient import records

    taken = create(medicalRecordNumber="MRN-0000000000").get_json()
    draws = iter(["MRN-0000000000", "MRN-1111111111"])
    monkeypatch.setattr(records, "new_record_number", lambda: next(draws))
    created = create()
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["medicalRecordNumber"] == "MRN-1111111111"
    assert created.get_json()["billingStatus"] == "ACTIVE"
    with app.app_context():
        events = db.session.scalars(sa.select(OutboxEvent.patient_id)).all()
    assert sorted(map(str, events)) == sorted([taken["id"], created.get_json()["id"]])


def test_concurrent_creates_get_distinct_record_numbers(app):
    def attempt(index):
        with app.test_client() as racer:
            return racer.post("/patients", json={**VALID, "email": f"racer{index}@example.com"}).get_json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(attempt, range(24)))
    numbers = [body["medicalRecordNumber"] for body in created]
    assert len(set(numbers)) == 24 and all(RECORD_NUMBER.match(number) for number in numbers)


def test_search_by_birth_date_and_by_record_number(client, create):
    ids = {}
    for index, born in enumerate(["1970-01-01", "1985-12-10", "1985-12-10", "1985-12-11"]):
        ids[index] = create(dateOfBirth=born, medicalRecordNumber=f"S-{index}").get_json()["id"]

    def found(query):
        response = client.get("/patients", query_string=query)
        assert response.status_code == 200
        return sorted(patient["id"] for patient in response.get_json())

    assert found({"dateOfBirth": "1985-12-10"}) == sorted([ids[1], ids[2]])
    assert found({"medicalRecordNumber": "S-3"}) == [ids[3]]
    assert found({"medicalRecordNumber": "S-3", "dateOfBirth": "1985-12-10"}) == []
    assert found({"medicalRecordNumber": "s-3"}) == []  # exact
    refused = client.get("/patients", query_string={"dateOfBirth": "10/12/1985"})
    assert refused.status_code == 422 and list(refused.get_json()["errors"]["query"]) == ["dateOfBirth"]


def test_the_seed_patients_have_record_numbers(app):
    from patient.seed import seed_patients

    with app.app_context():
        seed_patients(app)
        numbers = db.session.scalars(sa.select(Patient.medical_record_number)).all()
    assert len(numbers) == 15 and len(set(numbers)) == 15
    assert all(RECORD_NUMBER.match(number) for number in numbers)
