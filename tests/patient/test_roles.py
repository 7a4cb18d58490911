"""The patient service checks the caller's role itself (defence in depth):
called directly, with no identity or too low a role, nothing is read or written."""

import uuid

import pytest

from pms_common.identity import ADMIN, SERVICE, USER
from tests.patient.conftest import VALID
from tests.support import client_as, identity_headers

NO_IDENTITY = None


def operations(patient_id):
    """(name, method, path, body, role needed) of every operation."""
    body = {k: VALID[k] for k in ("name", "email", "address", "dateOfBirth")}
    return [
        ("list", "get", "/patients", None, USER),
        ("get", "get", f"/patients/{patient_id}", None, USER),
        ("create", "post", "/patients", {**VALID, "email": "new@example.com"}, ADMIN),
        ("update", "put", f"/patients/{patient_id}", {**body, "name": "Changed"}, ADMIN),
        ("delete", "delete", f"/patients/{patient_id}", None, ADMIN),
    ]


REFUSALS = [  # (caller's role, role needed, status)
    (NO_IDENTITY, USER, 401),
    (NO_IDENTITY, ADMIN, 401),
    (USER, ADMIN, 403),
    (SERVICE, USER, 403),
    (SERVICE, ADMIN, 403),  # the parts' own role is no user's
    ("ROOT", USER, 403),
    ("admin", ADMIN, 403),  # unknown, or not spelt as issued
]


@pytest.mark.parametrize("caller, needed, status", REFUSALS)
def test_an_operation_without_its_role_is_refused_and_changes_nothing(app, client, caller, needed, status):
    patient = client.post("/patients", json=VALID).get_json()
    refused = 0
    for name, method, path, body, role in operations(patient["id"]):
        if role != needed:
            continue
        response = getattr(client_as(app, caller), method)(path, json=body)
        assert response.status_code == status, (name, response.get_json())
        assert response.get_json()["code"] == status and response.get_json()["message"]
        if status == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"
        refused += 1
    assert refused >= 2
    assert client.get("/patients").get_json() == [patient]


def test_an_email_without_a_role_or_a_role_without_an_email_is_no_identity(app):
    for headers in (
        {"X-User-Email": "someone@example.com"},
        {"X-User-Role": ADMIN},
        {"X-User-Email": "", "X-User-Role": ADMIN},
    ):
        assert client_as(app).get("/patients", headers=headers).status_code == 401


def test_a_user_reads_and_only_an_admin_writes(app):
    user, admin = client_as(app, USER), client_as(app, ADMIN)
    created = admin.post("/patients", json=VALID)
    assert created.status_code == 201
    patient_id = created.get_json()["id"]
    assert [p["id"] for p in user.get("/patients").get_json()] == [patient_id]
    assert user.get(f"/patients/{patient_id}").status_code == 200
    body = {k: VALID[k] for k in ("email", "address", "dateOfBirth")}
    assert admin.put(f"/patients/{patient_id}", json={**body, "name": "Ada King"}).status_code == 200
    assert admin.delete(f"/patients/{patient_id}").status_code == 204


def test_a_refused_caller_learns_nothing_about_the_body_or_the_patient(app):
    """The role is checked before the body is validated or the patient looked up."""
    user = client_as(app, USER)
    assert user.post("/patients", json={"name": ""}).status_code == 403
    assert user.delete(f"/patients/{uuid.uuid4()}").status_code == 403
    assert client_as(app).get(f"/patients/{uuid.uuid4()}").status_code == 401


def test_health_readiness_and_the_api_document_need_no_identity(app):
    anonymous = client_as(app)
    for path in ("/health", "/health/live", "/health/ready", "/openapi.json"):
        assert anonymous.get(path).status_code == 200, path


def test_the_acting_user_is_the_one_the_gateway_named(app, caplog):
    caplog.set_level("INFO", logger="patient.records")
    response = app.test_client().post(
        "/patients", json=VALID, headers=identity_headers(ADMIN, "boss@clinic.example")
    )
    assert response.status_code == 201
    assert [record.by for record in caplog.records if record.getMessage() == "patient created"] == [
        "boss@clinic.example"
    ]
