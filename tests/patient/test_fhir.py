"""The FHIR R4 face of the patient service, on a real database with a real
billing server: every answer parsed with fhir.resources' R4B models (which
validate it), and the writes shown to take the REST API's path (billing
account, outbox event)."""

import uuid
from datetime import date
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient

from patient.extensions import db
from patient.fhir import RECORD_NUMBER_SYSTEM, REGISTRATION_DATE_URL
from patient.models import OutboxEvent
from pms_common.identity import USER
from tests.patient.test_fields import RECORD_NUMBER
from tests.support import client_as

FHIR_JSON = "application/fhir+json"


def patient_resource(**changes):
    resource = {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": "Lovelace", "given": ["Ada"]}],
        "telecom": [
            {"system": "email", "value": "ada@example.com"},
            {"system": "phone", "value": "+44 20 7946 0958"},
        ],
        "gender": "female",
        "birthDate": "1985-12-10",
        "address": [{"line": ["12 St James's Sq"], "city": "London"}],
    }
    resource.update(changes)
    return resource


def fhir_body(response):
    assert response.headers["Content-Type"].startswith(FHIR_JSON), response.headers["Content-Type"]
    return response.get_json()


def parsed_patient(response):
    return FhirPatient.model_validate(fhir_body(response))


def outcome(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    parsed = OperationOutcome.model_validate(fhir_body(response))
    assert parsed.issue and all(issue.severity and issue.code and issue.diagnostics for issue in parsed.issue)
    return parsed


def expressions(parsed):
    return [expression for issue in parsed.issue for expression in issue.expression or []]


def events_of(app, patient_id):
    with app.app_context():
        rows = db.session.scalars(sa.select(OutboxEvent).order_by(OutboxEvent.id)).all()
        db.session.expunge_all()
    return [row.event_type for row in rows if str(row.patient_id) == patient_id]


@pytest.fixture
def reader(app):
    return client_as(app, USER)


def test_metadata_is_a_capability_statement_open_to_anyone(app):
    response = client_as(app).get("/fhir/metadata")
    assert response.status_code == 200
    statement = CapabilityStatement.model_validate(fhir_body(response))
    assert statement.fhirVersion == "4.0.1"
    (patient,) = statement.rest[0].resource
    assert patient.type == "Patient"
    assert {i.code for i in patient.interaction} == {
        "read",
        "vread",
        "search-type",
        "create",
        "update",
        "delete",
    }
    assert {p.name for p in patient.searchParam} >= {
        "name",
        "family",
        "given",
        "birthdate",
        "email",
        "identifier",
        "gender",
        "_id",
    }


def test_create_takes_the_rest_path_and_reads_back_as_a_valid_patient(app, client, reader):
    created = client.post("/fhir/Patient", json=patient_resource(), content_type=FHIR_JSON)
    assert created.status_code == 201, created.get_data(as_text=True)
    patient = parsed_patient(created)
    assert created.headers["Location"] == f"/api/fhir/Patient/{patient.id}/_history/1"
    assert created.headers["ETag"] == 'W/"1"'
    assert patient.meta.versionId == "1" and patient.meta.lastUpdated is not None
    (identifier,) = patient.identifier
    assert identifier.system == RECORD_NUMBER_SYSTEM and RECORD_NUMBER.match(identifier.value)
    (registered,) = patient.extension
    assert registered.url == REGISTRATION_DATE_URL and registered.valueDate == date.today()

    # One record: the REST API shows it, with its billing account and the new fields.
    rest = client.get(f"/patients/{patient.id}").get_json()
    assert rest["name"] == "Ada Lovelace" and rest["email"] == "ada@example.com"
    assert rest["address"] == "12 St James's Sq, London"
    assert (rest["phone"], rest["gender"], rest["medicalRecordNumber"]) == (
        "+44 20 7946 0958",
        "female",
        identifier.value,
    )
    assert rest["billingStatus"] == "ACTIVE" and rest["billingAccountId"]
    assert events_of(app, patient.id) == ["PATIENT_CREATED"]

    read = reader.get(f"/fhir/Patient/{patient.id}")
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"'
    again = parsed_patient(read)
    assert again.name[0].text == "Ada Lovelace"
    assert (again.name[0].family, again.name[0].given) == ("Lovelace", ["Ada"])
    assert {(t.system, t.value) for t in again.telecom} == {
        ("email", "ada@example.com"),
        ("phone", "+44 20 7946 0958"),
    }
    assert again.birthDate == date(1985, 12, 10) and again.gender == "female"
    assert parsed_patient(reader.get(f"/fhir/Patient/{patient.id}/_history/1")).id == patient.id
    outcome(reader.get(f"/fhir/Patient/{patient.id}/_history/2"), 404)


def test_a_rest_patient_is_a_fhir_patient(client, reader):
    created = client.post(
        "/patients",
        json={
            "name": "Grace Brewster Hopper",
            "email": "grace@example.com",
            "address": "Arlington",
            "dateOfBirth": "1906-12-09",
            "registeredDate": "2024-05-01",
        },
    ).get_json()
    patient = parsed_patient(reader.get(f"/fhir/Patient/{created['id']}"))
    # Three words: which are the family name cannot be told, so only the text is given.
    assert patient.name[0].text == "Grace Brewster Hopper" and patient.name[0].family is None
    assert patient.identifier[0].value == created["medicalRecordNumber"]
    assert patient.extension[0].valueDate == date(2024, 5, 1)
    assert patient.gender is None and [t.system for t in patient.telecom] == ["email"]


def test_a_given_record_number_and_registration_date_are_kept(client):
    resource = patient_resource(
        identifier=[{"system": RECORD_NUMBER_SYSTEM, "value": "A-1001"}],
        extension=[{"url": REGISTRATION_DATE_URL, "valueDate": "2020-02-02"}],
    )
    patient = parsed_patient(client.post("/fhir/Patient", json=resource, content_type=FHIR_JSON))
    assert patient.identifier[0].value == "A-1001" and patient.extension[0].valueDate == date(2020, 2, 2)
    duplicate = patient_resource(
        identifier=[{"system": RECORD_NUMBER_SYSTEM, "value": "A-1001"}],
        telecom=[{"system": "email", "value": "other@example.com"}],
    )
    refused = outcome(client.post("/fhir/Patient", json=duplicate, content_type=FHIR_JSON), 409)
    assert expressions(refused) == ["Patient.identifier"]
    refused = outcome(client.post("/fhir/Patient", json=patient_resource(), content_type=FHIR_JSON), 409)
    assert expressions(refused) == ["Patient.telecom"] and refused.issue[0].code == "duplicate"


def test_update_honours_if_match_and_replaces_the_elements(app, client):
    patient = parsed_patient(client.post("/fhir/Patient", json=patient_resource(), content_type=FHIR_JSON))
    url = f"/fhir/Patient/{patient.id}"
    moved = patient_resource(id=patient.id, address=[{"text": "4 Elm Close, Southsea"}])
    del moved["gender"]
    moved["telecom"] = moved["telecom"][:1]
    updated = client.put(url, json=moved, headers={"If-Match": 'W/"1"'}, content_type=FHIR_JSON)
    assert updated.status_code == 200, updated.get_data(as_text=True)
    assert updated.headers["ETag"] == 'W/"2"'
    after = parsed_patient(updated)
    assert after.meta.versionId == "2" and after.address[0].text == "4 Elm Close, Southsea"
    assert after.gender is None and [t.system for t in after.telecom] == ["email"]
    # Kept when left out: the record number and the registration date.
    assert after.identifier[0].value == patient.identifier[0].value
    assert after.extension[0].valueDate == date.today()

    stale = client.put(url, json=moved, headers={"If-Match": 'W/"1"'}, content_type=FHIR_JSON)
    assert expressions(outcome(stale, 412)) == ["Patient.meta.versionId"]
    assert events_of(app, patient.id) == ["PATIENT_CREATED", "PATIENT_UPDATED"]

    other_id = outcome(client.put(url, json={**moved, "id": str(uuid.uuid4())}, content_type=FHIR_JSON), 400)
    assert expressions(other_id) == ["Patient.id"]
    outcome(client.put(f"/fhir/Patient/{uuid.uuid4()}", json=moved, content_type=FHIR_JSON), 400)


def test_delete_takes_the_rest_path(app, client, reader):
    patient = parsed_patient(client.post("/fhir/Patient", json=patient_resource(), content_type=FHIR_JSON))
    url = f"/fhir/Patient/{patient.id}"
    outcome(client.delete(url, headers={"If-Match": 'W/"7"'}), 412)
    assert client.delete(url, headers={"If-Match": 'W/"1"'}).status_code == 204
    assert events_of(app, patient.id) == ["PATIENT_CREATED", "PATIENT_DELETED"]
    assert expressions(outcome(reader.get(url), 404)) == ["Patient.id"]
    outcome(client.delete(url), 404)
    assert client.get(f"/patients/{patient.id}").status_code == 404


def test_search_pages_with_links_and_filters(client, reader):
    ids = {}
    for given, born, gender in (
        ("Ada", "1980-03-01", "female"),
        ("Alan", "1981-06-15", "male"),
        ("Grace", "1990-01-20", "female"),
        ("Edsger", "1990-12-31", "male"),
        ("Barbara", "2001-07-07", "other"),
    ):
        resource = patient_resource(
            name=[{"family": "Zephyrine", "given": [given]}],
            telecom=[{"system": "email", "value": f"{given.lower()}@example.com"}],
            birthDate=born,
            gender=gender,
        )
        created = client.post("/fhir/Patient", json=resource, content_type=FHIR_JSON)
        assert created.status_code == 201, created.get_data(as_text=True)
        ids[given] = created.get_json()["id"]

    seen, url, pages = [], "/fhir/Patient?name=zephyr&_count=2&_sort=birthdate", 0
    previous = None
    while url:
        response = reader.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        bundle = Bundle.model_validate(fhir_body(response))
        assert bundle.type == "searchset" and bundle.total == 5
        links = {link.relation: link.url for link in bundle.link}
        assert parse_qs(urlsplit(links["self"]).query)["name"] == ["zephyr"]
        assert ("previous" in links) == (pages > 0)
        if previous:
            assert urlsplit(links["previous"]).query == urlsplit(previous).query
        for entry in bundle.entry or []:
            assert entry.fullUrl.endswith(f"/api/fhir/Patient/{entry.resource.id}")
            seen.append(entry.resource.id)
        pages += 1
        previous = links["self"]
        url = links.get("next")
        if url:
            url = url[url.index("/api/fhir/") + len("/api") :]
    assert pages == 3
    assert seen == [ids[g] for g in ("Ada", "Alan", "Grace", "Edsger", "Barbara")]

    def found(query):
        response = reader.get("/fhir/Patient", query_string=query)
        assert response.status_code == 200, response.get_data(as_text=True)
        bundle = Bundle.model_validate(fhir_body(response))
        return sorted(entry.resource.id for entry in bundle.entry or [])

    def of(*names):
        return sorted(ids[name] for name in names)

    assert found({"birthdate": "1990"}) == of("Grace", "Edsger")
    assert found({"birthdate": "1990-12"}) == of("Edsger")
    assert found([("birthdate", "ge1981-06-15"), ("birthdate", "lt1991")]) == of("Alan", "Grace", "Edsger")
    assert found({"birthdate": "sa1990-12-31"}) == of("Barbara")
    assert found({"gender": "male,other"}) == of("Alan", "Edsger", "Barbara")
    assert found({"given": "gra"}) == of("Grace")
    assert found({"family": "zeph"}) == of(*ids)
    assert found({"name": "ephyr"}) == []
    assert found({"name:contains": "ephyr"}) == of(*ids)
    assert found({"email": "ALAN@example.com"}) == of("Alan")
    assert found({"_id": f"{ids['Ada']},not-a-uuid"}) == of("Ada")
    number = client.get(f"/patients/{ids['Grace']}").get_json()["medicalRecordNumber"]
    assert found({"identifier": f"{RECORD_NUMBER_SYSTEM}|{number}"}) == of("Grace")
    assert found({"identifier": number}) == of("Grace")
    assert found({"identifier": f"urn:other|{number}"}) == []
    counted = Bundle.model_validate(fhir_body(reader.get("/fhir/Patient?name=zephyr&_count=0")))
    assert counted.total == 5 and not counted.entry

    for query, expression in (
        ({"birthdate": "xx1990"}, "Patient.birthDate"),
        ({"birthdate": "1990-13-01"}, "Patient.birthDate"),
        ({"gender": "f"}, "Patient.gender"),
        ({"_count": "-1"}, None),
        ({"_sort": "address"}, None),
    ):
        refused = outcome(
            reader.get("/fhir/Patient", query_string=query), 400 if "_count" not in query else 422
        )
        assert expressions(refused) == ([expression] if expression else []), query


def test_every_error_is_an_operation_outcome(app, client, reader):
    patient_id = client.post("/fhir/Patient", json=patient_resource(), content_type=FHIR_JSON).get_json()[
        "id"
    ]
    anonymous, url = client_as(app), f"/fhir/Patient/{patient_id}"
    assert outcome(anonymous.get(url), 401).issue[0].code == "login"
    assert outcome(anonymous.get("/fhir/Patient"), 401).issue[0].code == "login"
    assert (
        outcome(reader.post("/fhir/Patient", json=patient_resource(), content_type=FHIR_JSON), 403)
        .issue[0]
        .code
        == "forbidden"
    )
    outcome(reader.delete(url), 403)
    assert client.get(f"/patients/{patient_id}").status_code == 200

    unsupported = outcome(
        client.post("/fhir/Patient", data="<Patient/>", content_type="application/xml"), 415
    )
    assert unsupported.issue[0].code == "not-supported"
    outcome(client.post("/fhir/Patient", data="{not json", content_type=FHIR_JSON), 400)
    outcome(client.get("/fhir/Observation"), 404)

    for broken, expression in (
        ({"birthDate": None}, "Patient.birthDate"),
        ({"birthDate": "1985"}, "Patient.birthDate"),
        ({"birthDate": "2999-01-01"}, "Patient.birthDate"),
        ({"gender": "f"}, "Patient.gender"),
        ({"telecom": [{"system": "phone", "value": "123"}]}, "Patient.telecom"),
        ({"telecom": [{"system": "email", "value": "not-an-email"}]}, "Patient.telecom"),
        (
            {"telecom": [{"system": "email", "value": "a@example.com"}, {"system": "phone", "value": "x"}]},
            "Patient.telecom",
        ),
        ({"name": [{"given": ["Ada"], "family": 7}]}, "Patient.name[0].family"),
        ({"resourceType": "Observation"}, "Patient.resourceType"),
        ({"identifier": [{"system": "urn:other", "value": "1"}]}, "Patient.identifier[0].system"),
        ({"extension": [{"url": REGISTRATION_DATE_URL, "valueDate": "1970-01-01"}]}, "Patient.extension"),
    ):
        resource = patient_resource(**broken)
        if broken.get("birthDate", "") is None:
            del resource["birthDate"]
        refused = outcome(client.post("/fhir/Patient", json=resource, content_type=FHIR_JSON), 422)
        assert expression in expressions(refused), (broken, expressions(refused))


def test_plain_json_is_accepted_too(client):
    created = client.post("/fhir/Patient", json=patient_resource(), content_type="application/json")
    assert created.status_code == 201
    parsed_patient(created)


def test_the_fhir_routes_are_in_the_patient_document(client):
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    assert {path for path in paths if path.startswith("/fhir/")} == {
        "/fhir/metadata",
        "/fhir/Patient",
        "/fhir/Patient/{patient_id}",
        "/fhir/Patient/{patient_id}/_history/{version_id}",
    }
    assert paths["/fhir/metadata"]["get"]["security"] == []
    search = paths["/fhir/Patient"]["get"]
    assert {p["name"] for p in search["parameters"]} >= {
        "name",
        "family",
        "given",
        "birthdate",
        "email",
        "identifier",
        "gender",
        "_id",
        "_count",
        "_sort",
    }
    for path, methods in paths.items():
        if not path.startswith("/fhir/"):
            continue
        for method, operation in methods.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status == "431":  # the gateway's, before it has read the path
                    assert list(response["content"]) == ["application/json"], (method, path)
                elif status.startswith(("4", "5")) or status == "default":
                    assert list(response["content"]) == [FHIR_JSON], (method, path, status)
    assert list(paths["/fhir/Patient"]["post"]["requestBody"]["content"]) == [FHIR_JSON]
