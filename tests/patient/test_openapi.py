"""The patient OpenAPI document as Swagger UI uses it: If-Match optional with
no 428, 401 and 403 on every operation, and examples that make a plausible
patient, which a create from the default body registers (once) and an update
from the default body changes."""

from datetime import date

import pytest

from tests.patient.conftest import VALID

ITEM = "/patients/{patient_id}"


@pytest.fixture
def spec(client):
    return client.get("/openapi.json").get_json()


def operations(spec):
    """The REST API's operations (the FHIR API's, in the same document, answer OperationOutcomes)."""
    for path in ("/patients", ITEM):
        for method, operation in spec["paths"][path].items():
            if method != "parameters":
                yield path, method, operation


def schema_of(spec, reference):
    return spec["components"]["schemas"][reference["$ref"].rsplit("/", 1)[-1]]


def example_body(spec, path, method):
    """The request body Swagger UI's "Try it out" fills in: every writable
    property's example (a property without one would get a placeholder)."""
    schema = schema_of(
        spec, spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    )
    writable = {name: prop for name, prop in schema["properties"].items() if not prop.get("readOnly")}
    assert not [name for name, prop in writable.items() if "example" not in prop], writable
    return {name: prop["example"] for name, prop in writable.items()}


def test_if_match_is_optional_and_no_428_is_documented(spec):
    for method in ("put", "delete"):
        operation = spec["paths"][ITEM][method]
        if_match = [p for p in operation["parameters"] if p.get("name") == "If-Match"]
        assert len(if_match) == 1 and if_match[0]["required"] is False, operation["parameters"]
        assert "412" in operation["responses"]
        assert "ETag" in operation["responses"]["412"]["description"]
    assert "428" not in str(spec)
    assert "IF_MATCH" not in spec["components"].get("parameters", {})


def test_an_update_and_a_delete_without_if_match_go_ahead(client, create):
    """What the document says: If-Match may be left out (never a 428)."""
    created = create().get_json()
    url = f"/patients/{created['id']}"
    body = {key: created[key] for key in ("name", "email", "dateOfBirth")}
    assert client.put(url, json={**body, "address": "Ockham Park"}).status_code == 200
    assert client.delete(url).status_code == 204


def test_every_operation_documents_401_and_403_in_the_error_shape(spec):
    found = list(operations(spec))
    assert len(found) == 5
    for path, method, operation in found:
        for code in ("401", "403"):
            response = operation["responses"].get(code)
            assert response and response["description"], (path, method, code)
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_json_bodies_document_415_and_the_create_documents_its_location(spec):
    for path, method, operation in operations(spec):
        if "requestBody" in operation:
            assert "application/json" in operation["responses"]["415"]["description"], (path, method)
    assert "Location" in spec["paths"]["/patients"]["post"]["responses"]["201"]["headers"]


def test_every_patient_property_has_an_example(spec):
    for name in ("Patient", "PatientUpdate"):
        properties = spec["components"]["schemas"][name]["properties"]
        assert {"name", "email", "address", "dateOfBirth", "registeredDate"} <= set(properties)
        assert not [field for field, prop in properties.items() if "example" not in prop], name


def test_the_examples_make_a_plausible_patient(spec):
    patient = example_body(spec, "/patients", "post")
    assert set(VALID) <= set(patient)
    first, last = patient["name"].split()
    assert first.istitle() and last.istitle() and "string" not in patient.values()
    local, _, domain = patient["email"].partition("@")
    assert local and "." in domain
    assert any(char.isdigit() for char in patient["address"]) and "," in patient["address"]
    born, registered = (
        date.fromisoformat(patient["dateOfBirth"]),
        date.fromisoformat(patient["registeredDate"]),
    )
    assert date(1900, 1, 1) < born < registered <= date.today()
    assert (date.today() - born).days // 365 >= 18


def test_a_create_from_the_example_succeeds_once_and_an_update_from_its_example_changes_it(client, spec):
    created = client.post("/patients", json=example_body(spec, "/patients", "post"))
    assert created.status_code == 201, created.get_json()
    patient = created.get_json()
    assert client.post("/patients", json=example_body(spec, "/patients", "post")).status_code == 409
    update = example_body(spec, ITEM, "put")
    updated = client.put(f"/patients/{patient['id']}", json=update)
    assert updated.status_code == 200, updated.get_json()
    assert updated.get_json()["address"] == update["address"] != patient["address"]
    assert client.get(f"/patients/{patient['id']}").get_json()["address"] == update["address"]


def test_operation_ids_are_unique_and_the_rest_api_keeps_the_plain_names(spec):
    """The FHIR API in the same document has operations of the same summary."""
    ids = [
        operation["operationId"]
        for methods in spec["paths"].values()
        for method, operation in methods.items()
        if method != "parameters"
    ]
    assert len(ids) == len(set(ids)), ids
    assert [operation["operationId"] for _, _, operation in operations(spec)] == [
        "listPatients",
        "registerPatient",
        "getPatient",
        "updatePatient",
        "deletePatient",
    ]
