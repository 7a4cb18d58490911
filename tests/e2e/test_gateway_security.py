"""The gateway is the only door: every bad token is refused, roles hold,
identity headers cannot be forged, and auth being down never lets anyone in."""

import base64
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests

from tests.e2e.conftest import supervisorctl
from tests.support import wait_for

pytestmark = pytest.mark.e2e
PATIENT = {
    "name": "Gate Keeper",
    "address": "1 Door St",
    "dateOfBirth": "1980-01-01",
    "registeredDate": "2024-01-01",
}


def signing_key(system):
    return (Path(system.env["PMS_DATA_DIR"]) / "auth" / "jwt-secret").read_text().strip()


def claims(**changes):
    now = int(time.time())
    return {
        "sub": "testuser@test.com",
        "role": "ADMIN",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": "pms-auth",
        **changes,
    }


def b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def status_with(system, authorization, path="/api/patients"):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = requests.get(f"{system.url}{path}", headers=headers, timeout=10)
    if response.status_code in (401, 403):
        body = response.json()
        assert body["code"] == response.status_code and body["message"]
    return response.status_code


def forged_tokens(system):
    key = signing_key(system)
    real = system.token()
    header, payload, signature = real.split(".")
    tampered_payload = b64(
        {
            **json.loads(base64.urlsafe_b64decode(payload + "==")),
            "role": "ADMIN",
            "sub": "intruder@example.com",
        }
    )
    return {
        "no header": None,
        "not bearer": f"Basic {base64.b64encode(b'testuser@test.com:password123').decode()}",
        "empty bearer": "Bearer ",
        "garbage": "Bearer abc.def.ghi",
        "alg none": "Bearer " + b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims()) + ".",
        "wrong key": "Bearer " + jwt.encode(claims(), "x" * 48, algorithm="HS256"),
        "other algorithm": "Bearer " + jwt.encode(claims(), key, algorithm="HS512"),
        "expired": "Bearer "
        + jwt.encode(
            claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), key, algorithm="HS256"
        ),
        "tampered claims": f"Bearer {header}.{tampered_payload}.{signature}",
        "missing jti": "Bearer "
        + jwt.encode({k: v for k, v in claims().items() if k != "jti"}, key, algorithm="HS256"),
    }


def test_every_bad_token_is_401(system):
    results = {name: status_with(system, value) for name, value in forged_tokens(system).items()}
    assert results == dict.fromkeys(results, 401)
    assert status_with(system, f"Bearer {system.token()}") == 200


def test_a_revoked_token_is_refused_within_the_cache_bound(system):
    token = system.token()
    assert status_with(system, f"Bearer {token}") == 200
    logout = requests.post(
        f"{system.url}/auth/logout", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert logout.status_code == 204
    revoked_at = time.monotonic()
    wait_for(
        lambda: status_with(system, f"Bearer {token}") == 401,
        timeout=5,
        interval=0.1,
        message="the revoked token to be refused",
    )
    assert time.monotonic() - revoked_at < 3  # AUTHZ_CACHE_SECONDS=1 in these tests


def authz_yes_count(system):
    """How many requests ext_authz has allowed (Envoy's own counter)."""
    stats = requests.get(
        f"http://127.0.0.1:{system.ports['ENVOY_ADMIN_PORT']}/stats",
        params={"filter": r"^http\.gateway\.ext_authz\.ok$"},
        timeout=10,
    ).text
    return int(stats.split(":")[1]) if stats.strip() else 0


def test_the_gateway_reuses_a_yes_only_for_the_same_token_and_role(system, user_token):
    admin_token = system.token()
    status_with(system, f"Bearer {admin_token}")  # ext_authz says yes; the gateway remembers it
    before = authz_yes_count(system)
    started = time.monotonic()
    statuses = {status_with(system, f"Bearer {admin_token}") for _ in range(20)}
    asked = authz_yes_count(system) - before
    assert statuses == {200}
    # Within the 1 s bound (AUTHZ_CACHE_SECONDS) the 20 reads went without asking.
    assert asked <= 1 + int(time.monotonic() - started)
    # Another token, or the same token on a route that needs another role, is asked afresh.
    assert status_with(system, f"Bearer {user_token}") == 200
    reader = system.session(user_token)
    denied = reader.post(
        f"{system.url}/api/patients",
        timeout=10,
        json={**PATIENT, "email": f"{uuid.uuid4().hex[:8]}@example.com"},
    )
    assert denied.status_code == 403


def test_a_remembered_yes_still_replaces_client_sent_identity_headers(system):
    admin = system.session()
    forged = {"X-User-Role": "ADMIN", "X-User-Email": "boss@example.com"}
    created = []
    for _ in range(3):  # the first is asked; the others answered from the gateway's memo
        response = admin.post(
            f"{system.url}/api/patients",
            headers=forged,
            timeout=10,
            json={**PATIENT, "email": f"{uuid.uuid4().hex[:8]}@example.com"},
        )
        assert response.status_code == 201
        created.append(response.json()["id"])

    def creators():
        lines = [
            json.loads(line.split("| ", 1)[1])
            for line in system.log_lines("patient")
            if "patient created" in line
        ]
        return {line["patient_id"]: line.get("by") for line in lines if line["patient_id"] in created}

    wait_for(lambda: len(creators()) == 3, timeout=10, message="the creates in patient's log")
    assert set(creators().values()) == {"testuser@test.com"}


@pytest.fixture(scope="module")
def user_token(system):
    admin = system.session()
    email = f"reader-{uuid.uuid4().hex[:6]}@example.com"
    password = "a-Long-enough-passphrase-7"
    created = admin.post(
        f"{system.url}/auth/users", json={"email": email, "password": password, "role": "USER"}, timeout=10
    )
    assert created.status_code == 201, created.text
    return system.token({"email": email, "password": password})


def test_a_user_reads_but_cannot_write(system, user_token):
    reader = system.session(user_token)
    assert reader.get(f"{system.url}/api/patients", timeout=10).status_code == 200
    assert reader.get(f"{system.url}/api/analytics/summary", timeout=10).status_code == 200
    create = reader.post(
        f"{system.url}/api/patients",
        timeout=10,
        json={**PATIENT, "email": f"{uuid.uuid4().hex[:8]}@example.com"},
    )
    assert create.status_code == 403 and create.json()["code"] == 403
    some_id = reader.get(f"{system.url}/api/patients", timeout=10).json()[0]["id"]
    assert reader.delete(f"{system.url}/api/patients/{some_id}", timeout=10).status_code == 403
    assert reader.get(f"{system.url}/auth/users", timeout=10).status_code == 403
    assert reader.get(f"{system.url}/api/patients/{some_id}", timeout=10).status_code == 200


def test_client_sent_identity_headers_are_ignored(system, user_token):
    forged = {"X-User-Role": "ADMIN", "X-User-Email": "boss@example.com"}
    reader = system.session(user_token)
    create = reader.post(
        f"{system.url}/api/patients",
        headers=forged,
        timeout=10,
        json={**PATIENT, "email": f"{uuid.uuid4().hex[:8]}@example.com"},
    )
    assert create.status_code == 403
    # With no token at all, forged headers get nowhere either.
    anonymous = requests.post(f"{system.url}/api/patients", headers=forged, json=PATIENT, timeout=10)
    assert anonymous.status_code == 401


def test_login_throttling_then_recovery(system):
    email = f"throttle-{uuid.uuid4().hex[:6]}@example.com"
    admin = system.session()
    password = "Another-long-passphrase-9"
    assert (
        admin.post(
            f"{system.url}/auth/users",
            json={"email": email, "password": password, "role": "USER"},
            timeout=10,
        ).status_code
        == 201
    )
    statuses = [
        requests.post(
            f"{system.url}/auth/login", json={"email": email, "password": "wrong-one"}, timeout=10
        ).status_code
        for _ in range(6)
    ]
    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    right = requests.post(f"{system.url}/auth/login", json={"email": email, "password": password}, timeout=10)
    assert right.status_code == 429 and right.headers.get("Retry-After")
    # LOGIN_WINDOW_SECONDS=3 in these tests.
    wait_for(
        lambda: (
            requests.post(
                f"{system.url}/auth/login", json={"email": email, "password": password}, timeout=10
            ).status_code
            == 200
        ),
        timeout=15,
        interval=0.5,
        message="login to work again after the window",
    )


def test_auth_down_never_lets_anyone_in(system):
    token = system.token()
    supervisorctl(system, "stop", "auth")
    try:
        time.sleep(1.5)  # past the ext_authz cache bound
        statuses = {
            status_with(system, f"Bearer {token}"),
            status_with(system, "Bearer abc.def.ghi"),
            status_with(system, None),
        }
        assert statuses <= {401, 503} and 503 in statuses
    finally:
        supervisorctl(system, "start", "auth")
    wait_for(
        lambda: status_with(system, f"Bearer {token}") == 200,
        timeout=60,
        interval=0.5,
        message="auth to come back",
    )


def test_gateway_errors_are_json(system):
    api = system.session()
    no_route = requests.get(f"{system.url}/no/such/path", timeout=10)
    assert no_route.status_code == 404 and no_route.json()["code"] == 404
    supervisorctl(system, "stop", "analytics")
    try:
        down = api.get(f"{system.url}/api/analytics/summary", timeout=10)
        assert down.status_code == 503
        body = down.json()
        assert body["code"] == 503 and body["status"] == "Service Unavailable" and body["message"]
        health = requests.get(f"{system.url}/health", timeout=10)
        wait_for(
            lambda: requests.get(f"{system.url}/health", timeout=10).status_code == 503,
            timeout=15,
            message="/health to go red",
        )
    finally:
        supervisorctl(system, "start", "analytics")
    wait_for(
        lambda: requests.get(f"{system.url}/health", timeout=10).status_code == 200,
        timeout=60,
        message="/health to recover",
    )
    assert health.headers["content-type"].startswith("application/json")


def test_request_ids_reach_the_services_logs(system):
    request_id = f"trace-{uuid.uuid4().hex}"
    api = system.session()
    response = api.get(f"{system.url}/api/patients", headers={"x-request-id": request_id}, timeout=10)
    assert response.status_code == 200
    gateway_id = response.headers["x-request-id"]
    # The gateway makes its own id (a client's is not trusted) and passes it on.
    wait_for(
        lambda: any(gateway_id in line for line in system.log_lines("patient")),
        timeout=10,
        message="the request id in patient's logs",
    )
    wait_for(
        lambda: any(gateway_id in line for line in system.log_lines("gateway")),
        timeout=10,
        message="the request id in the gateway's access log",
    )
