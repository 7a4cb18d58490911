"""The patient REST contract: create, read, update, delete, and bad input."""

import json
import uuid
from datetime import date, timedelta

import pytest

from tests.patient.conftest import VALID


def fields_in_error(response):
    return set(response.get_json()["errors"]["json"])


def test_create_returns_201_with_location_and_the_patient(client, create):
    response = create(email="Grace.Hopper@Example.com")
    assert response.status_code == 201
    body = response.get_json()
    # The path a client of the gateway follows; the gateway serves this part under /api.
    assert response.headers["Location"] == f"/api/patients/{body['id']}"
    assert uuid.UUID(body["id"])
    assert {k: body[k] for k in VALID} == {**VALID, "email": "Grace.Hopper@Example.com"}
    assert body["billingStatus"] == "ACTIVE" and body["billingAccountId"]
    fetched = client.get(response.headers["Location"].removeprefix("/api"))
    assert fetched.status_code == 200 and fetched.get_json() == body


# Stands for tomorrow's date, taken when the test runs: a date taken when the
# tests are collected is today's once a run crosses midnight.
TOMORROW = object()


@pytest.mark.parametrize("field", ["name", "email", "address", "dateOfBirth", "registeredDate"])
def test_every_field_is_required_on_create(client, field):
    body = {k: v for k, v in VALID.items() if k != field}
    response = client.post("/patients", json=body)
    assert response.status_code == 422
    assert fields_in_error(response) == {field}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 42}, "name"),
        ({"name": None}, "name"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@" + "b" * 250 + ".com"}, "email"),
        ({"address": "y" * 256}, "address"),
        ({"address": ""}, "address"),
        ({"dateOfBirth": "15/06/1985"}, "dateOfBirth"),
        ({"dateOfBirth": "1985-02-30"}, "dateOfBirth"),
        ({"dateOfBirth": TOMORROW}, "dateOfBirth"),
        ({"dateOfBirth": "1700-01-01"}, "dateOfBirth"),
        ({"registeredDate": TOMORROW}, "registeredDate"),
        ({"registeredDate": "1985-01-01"}, "registeredDate"),
        ({"id": str(uuid.uuid4())}, "id"),
        ({"favouriteColour": "blue"}, "favouriteColour"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(client, changes, field):
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    changes = {key: tomorrow if value is TOMORROW else value for key, value in changes.items()}
    response = client.post("/patients", json={**VALID, **changes})
    assert response.status_code == 422, response.get_json()
    assert field in fields_in_error(response)
    assert client.get("/patients").get_json() == []


def test_a_boundary_name_of_100_chars_is_accepted(create):
    assert create(name="n" * 100).status_code == 201


@pytest.mark.parametrize(
    "data, content_type, status",
    [
        ("{not json", "application/json", 400),
        ("[1, 2]", "application/json", 422),
        ('"just a string"', "application/json", 422),
        (json.dumps({**VALID, "address": "z" * 100_000}), "application/json", 413),
    ],
)
def test_malformed_or_absurd_bodies_are_4xx(client, data, content_type, status):
    response = client.post("/patients", data=data, content_type=content_type)
    assert response.status_code == status
    assert response.get_json()["code"] == status


def test_text_is_stored_and_returned_exactly(client, create):
    tricky = {"name": 'Zoë O\'Brien-Łukasz 李 "Bobby"', "address": "1'; DROP TABLE patients; --"}
    body = create(**tricky).get_json()
    fetched = client.get(f"/patients/{body['id']}").get_json()
    assert {k: fetched[k] for k in tricky} == tricky
    assert client.get("/patients", query_string={"name": "zoË"}).get_json()[0]["id"] == body["id"]


def test_duplicate_email_is_409_case_insensitively_and_writes_nothing(app, client, create):
    first = create(email="dup@example.com")
    response = create(email="DUP@example.COM")
    assert response.status_code == 409
    assert "email" in fields_in_error(response)
    assert [p["id"] for p in client.get("/patients").get_json()] == [first.get_json()["id"]]
    from patient.extensions import db
    from patient.models import OutboxEvent

    with app.app_context():
        assert db.session.query(OutboxEvent).count() == 1


def test_unknown_or_malformed_ids_are_404(client):
    assert client.get(f"/patients/{uuid.uuid4()}").status_code == 404
    assert client.get("/patients/not-a-uuid").status_code == 404
    assert client.put(f"/patients/{uuid.uuid4()}", json=VALID).status_code == 404
    assert client.delete(f"/patients/{uuid.uuid4()}").status_code == 404


def test_update_without_if_match_and_without_registered_date(client, create):
    created = create().get_json()
    changes = {
        "name": "Ada King",
        "email": created["email"],
        "address": "Ockham Park",
        "dateOfBirth": "1985-12-10",
    }
    response = client.put(f"/patients/{created['id']}", json=changes)
    assert response.status_code == 200
    assert response.get_json()["name"] == "Ada King"
    assert response.get_json()["registeredDate"] == created["registeredDate"]
    assert client.get(f"/patients/{created['id']}").get_json()["address"] == "Ockham Park"


def test_update_with_a_stale_etag_is_412_and_changes_nothing(client, create):
    created = create().get_json()
    url = f"/patients/{created['id']}"
    etag = client.get(url).headers["ETag"]
    base = {k: created[k] for k in ("email", "address", "dateOfBirth")}
    first = client.put(url, json={**base, "name": "First"}, headers={"If-Match": etag})
    assert first.status_code == 200 and first.headers["ETag"] != etag
    stale = client.put(url, json={**base, "name": "Second"}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert client.get(url).get_json()["name"] == "First"
    fresh = client.put(url, json={**base, "name": "Third"}, headers={"If-Match": first.headers["ETag"]})
    assert fresh.status_code == 200


def test_get_honours_if_none_match(client, create):
    url = f"/patients/{create().get_json()['id']}"
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_update_to_another_patients_email_is_409(client, create):
    create(email="taken@example.com")
    other = create().get_json()
    body = {k: other[k] for k in ("name", "address", "dateOfBirth")}
    response = client.put(f"/patients/{other['id']}", json={**body, "email": "Taken@Example.com"})
    assert response.status_code == 409
    assert client.get(f"/patients/{other['id']}").get_json()["email"] == other["email"]


def test_update_validates_like_create(client, create):
    created = create().get_json()
    response = client.put(f"/patients/{created['id']}", json={"name": "Only a name"})
    assert response.status_code == 422
    assert fields_in_error(response) == {"email", "address", "dateOfBirth"}


def test_delete_is_204_then_404(client, create):
    url = f"/patients/{create().get_json()['id']}"
    response = client.delete(url)
    assert response.status_code == 204 and response.data == b""
    assert client.get(url).status_code == 404
    assert client.delete(url).status_code == 404


def test_list_is_a_bare_array_with_pagination_header(client, create):
    for index in range(7):
        assert create(name=f"Patient {index}").status_code == 201
    response = client.get("/patients", query_string={"page": 2, "page_size": 3})
    assert response.status_code == 200
    assert [p["name"] for p in response.get_json()] == ["Patient 3", "Patient 4", "Patient 5"]
    pagination = json.loads(response.headers["X-Pagination"])
    assert pagination["total"] == 7 and pagination["total_pages"] == 3 and pagination["page"] == 2


@pytest.mark.parametrize(
    "query",
    [{"page_size": 501}, {"page_size": 0}, {"page": 0}, {"page": "x"}, {"sort": "email"}, {"name": ""}],
)
def test_bad_list_parameters_are_422(client, query):
    response = client.get("/patients", query_string=query)
    assert response.status_code == 422
    assert set(response.get_json()["errors"]["query"]) <= {"page", "page_size", "sort", "name"}


def test_filters_are_case_insensitive_and_literal(client, create):
    create(name="Maria Garcia", email="maria@example.com")
    create(name="Mario Rossi")
    create(name="100% Real_Name")

    def names(**query):
        return sorted(p["name"] for p in client.get("/patients", query_string=query).get_json())

    assert names(name="MARI") == ["Maria Garcia", "Mario Rossi"]
    assert names(email="MARIA@example.com") == ["Maria Garcia"]
    assert names(name="0% r") == ["100% Real_Name"]
    assert names(name="l_n") == ["100% Real_Name"]
    assert names(name="%") == ["100% Real_Name"]
    assert names(email="maria@") == []


def test_sorting_both_ways_with_a_stable_tie_break(client, create):
    for name, born in [("B", "1990-01-01"), ("A", "1980-01-01"), ("C", "1990-01-01"), ("A", "1970-01-01")]:
        create(name=name, dateOfBirth=born)

    def rows(sort):
        return client.get("/patients", query_string={"sort": sort}).get_json()

    by_name = rows("name")
    assert [p["name"] for p in by_name] == ["A", "A", "B", "C"]
    assert by_name[0]["id"] < by_name[1]["id"]  # ties break on id
    assert [p["dateOfBirth"] for p in rows("-dateOfBirth")][:2] == ["1990-01-01", "1990-01-01"]
    assert rows("-dateOfBirth")[:2] == rows("-dateOfBirth")[:2]
    assert [p["name"] for p in rows("-name")] == ["C", "B", "A", "A"]


def test_errors_share_one_json_shape(client):
    for response in (
        client.get(f"/patients/{uuid.uuid4()}"),
        client.post("/patients", json={}),
        client.get("/nowhere"),
    ):
        body = response.get_json()
        assert {"code", "status"} <= set(body) and body["code"] == response.status_code


def test_a_page_past_the_end_is_empty_even_an_absurd_one(client, create):
    create()
    for page in (2, 10**30):
        response = client.get("/patients", query_string={"page": page})
        assert response.status_code == 200 and response.get_json() == []
        assert json.loads(response.headers["X-Pagination"])["total"] == 1


def test_a_row_deleted_meanwhile_makes_an_update_404_not_500(app, create):
    """Found by schemathesis: a PUT racing a DELETE. The row goes away between
    the read and the write, through another connection, for real."""
    import sqlalchemy as sa
    from werkzeug.exceptions import HTTPException

    from patient.extensions import db
    from patient.models import Patient
    from patient.records import commit_or_conflict

    patient_id = uuid.UUID(create().get_json()["id"])
    with app.test_request_context():
        patient = db.session.get(Patient, patient_id)
        with db.engine.connect() as other:
            other.execute(sa.delete(Patient).where(Patient.id == patient_id))
            other.commit()
        patient.name = "Too late"
        with pytest.raises(HTTPException) as raised:
            commit_or_conflict(patient_id)
        assert raised.value.code == 404


@pytest.mark.parametrize(
    "look_alike",
    [
        "ADA@example.com",
        "Ada@Example.COM",
        "\uff41\uff44\uff41@example.com",  # full-width ａｄａ
        "ada@\uff45xample.com",  # full-width ｅ in the domain
    ],
)
def test_a_look_alike_of_a_patients_email_is_409(client, create, look_alike):
    first = create(email="ada@example.com")
    response = create(email=look_alike)
    assert response.status_code == 409, response.get_json()
    assert "email" in fields_in_error(response)
    other = create(email="someone.else@example.com").get_json()
    body = {k: other[k] for k in ("name", "address", "dateOfBirth")}
    assert client.put(f"/patients/{other['id']}", json={**body, "email": look_alike}).status_code == 409
    assert [p["id"] for p in client.get("/patients", query_string={"email": look_alike}).get_json()] == [
        first.get_json()["id"]
    ]


def test_case_folding_is_more_than_lower_case(create):
    """ß folds to ss: Straße and STRASSE are one address (lower() kept them apart)."""
    assert create(email="stra\u00dfe@example.com").status_code == 201
    assert create(email="STRASSE@example.com").status_code == 409


def test_an_email_whose_normal_form_outgrows_its_column_is_422(client):
    # U+FDFA is one character that NFKC spells out in eighteen.
    email = "\ufdfa" * 15 + "@example.com"
    response = client.post("/patients", json={**VALID, "email": email})
    assert response.status_code == 422
    assert "normalised" in response.get_json()["errors"]["json"]["email"][0]
