"""What every client meets at the gateway: one error shape from every part
behind it, the gateway's own and billing's transcoded errors included
({code: <HTTP status>, status: <reason>, message: <a sentence>}), with
x-request-id on every answer and no grpc-* header; messages that say what to
fix; Location headers that resolve through the gateway; and CORS for the
allowed browser origins only."""

import uuid
from http import HTTPStatus

import pytest
import requests

pytestmark = pytest.mark.e2e


def assert_error_shape(response, code):
    assert response.status_code == code, response.text
    body = response.json()
    assert body["code"] == code and body["status"] == HTTPStatus(code).phrase, body
    assert isinstance(body["message"], str) and len(body["message"]) > 10, body
    assert response.headers.get("x-request-id"), dict(response.headers)
    assert not [name for name in response.headers if name.lower().startswith("grpc-")]


@pytest.fixture(scope="module")
def api(system):
    return system.session()


def test_the_gateway_s_own_errors(system):
    assert_error_shape(requests.get(f"{system.url}/nowhere", timeout=10), 404)
    assert_error_shape(requests.get(f"{system.url}/api/patients", timeout=10), 401)
    assert_error_shape(requests.get(f"{system.url}/api/patients/%FF", timeout=10), 400)


def test_billing_s_transcoded_errors(system, api):
    assert_error_shape(api.get(f"{system.url}/api/billing/accounts/not-a-uuid", timeout=10), 400)
    assert_error_shape(api.get(f"{system.url}/api/billing/accounts/{uuid.uuid4()}", timeout=10), 404)


def test_billing_s_answers_carry_no_grpc_headers(system, api):
    patient_id = api.get(f"{system.url}/api/patients", timeout=10).json()[0]["id"]
    response = api.get(f"{system.url}/api/billing/accounts/{patient_id}", timeout=10)
    assert response.status_code == 200 and response.json()["patientId"] == patient_id
    assert response.headers.get("x-request-id")
    assert not [name for name in response.headers if name.lower().startswith("grpc-")]


def test_a_preflight_from_an_allowed_origin_needs_no_token(system):
    origin = "http://localhost:5173"  # a dev default of CORS_ALLOWED_ORIGINS
    preflight = requests.options(
        f"{system.url}/api/patients",
        timeout=10,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    read = system.session().get(f"{system.url}/api/patients", headers={"Origin": origin}, timeout=10)
    assert read.headers["access-control-allow-origin"] == origin
    assert "x-pagination" in read.headers["access-control-expose-headers"]


def test_another_origin_gets_no_cors_grant(system):
    preflight = requests.options(
        f"{system.url}/api/patients",
        timeout=10,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code in (401, 403)


def test_a_created_user_s_location_resolves_through_the_gateway(system, api):
    email = f"located-{uuid.uuid4().hex[:8]}@example.com"
    created = api.post(
        f"{system.url}/auth/users",
        timeout=10,
        json={"email": email, "password": "amber quarry whistle 77", "role": "USER"},
    )
    assert created.status_code == 201
    assert created.headers["Location"].startswith("/auth/users/")
    followed = api.get(f"{system.url}{created.headers['Location']}", timeout=10)
    assert followed.status_code == 200 and followed.json()["email"] == email


def test_a_created_patient_s_location_resolves_through_the_gateway(system, api):
    created = api.post(
        f"{system.url}/api/patients",
        timeout=10,
        json={
            "name": "Nora Quill",
            "email": f"located-{uuid.uuid4().hex[:8]}@example.com",
            "address": "9 Quay Street, Bristol",
            "dateOfBirth": "1979-08-30",
            "registeredDate": "2024-11-04",
        },
    )
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == f"/api/patients/{created.json()['id']}"
    followed = api.get(f"{system.url}{created.headers['Location']}", timeout=10)
    assert followed.status_code == 200 and followed.json() == created.json()


def test_a_patient_api_client_s_common_mistakes_are_explained(system, api):
    not_json = api.post(
        f"{system.url}/api/patients", data="name=Nora", headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert_error_shape(not_json, 415)
    assert "application/json" in not_json.json()["message"]
    malformed = api.get(f"{system.url}/api/patients/123", timeout=10)
    assert_error_shape(malformed, 404)
    assert "not a valid patient id" in malformed.json()["message"]
    assert_error_shape(api.post(f"{system.url}/api/patients", json={}, timeout=10), 422)
    assert_error_shape(api.patch(f"{system.url}/api/patients/{uuid.uuid4()}", json={}, timeout=10), 405)
