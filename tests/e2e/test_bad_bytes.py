"""Bad bytes through the gateway are a 4xx naming what is wrong, never a 5xx:
on the unauthenticated login, on the patient API and on the transcoded
billing route; in bodies, paths and query strings."""

import socket
from urllib.parse import urlsplit

import pytest
import requests

pytestmark = pytest.mark.e2e
NESTED = b"[" * 5000 + b"]" * 5000  # within every body-size limit, past json's recursion limit
PATIENT = (
    b'{"name": %s, "email": "bytes@example.com", "address": "1 Byte St", '
    b'"dateOfBirth": "1980-01-01", "registeredDate": "2024-01-01"}'
)
LOGIN = b'{"email": %s, "password": "whatever-it-is"}'


def raw_request(system, request_line, headers=b""):
    """Sends bytes as they are (no client library would send them), returns the status."""
    parts = urlsplit(system.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: gateway\r\nConnection: close\r\n" + headers + b"\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def token(system):
    return system.token()


# The same fault in a patient create and in a login (which needs no token).
BAD_BODIES = {
    "deeply nested JSON": (NESTED, NESTED),
    "lone surrogate": (PATIENT % b'"\\ud800"', LOGIN % b'"\\ud800@example.com"'),
    "NUL byte": (PATIENT % b'"Nul\\u0000Byte"', LOGIN % b'"nul\\u0000@example.com"'),
    "invalid UTF-8": (PATIENT % b'"\xff\xfe"', LOGIN % b'"\xff\xfe@example.com"'),
}


@pytest.mark.parametrize("fault", BAD_BODIES)
def test_bad_bodies_are_4xx(system, token, fault):
    patient_body, login_body = BAD_BODIES[fault]
    json_headers = {"Content-Type": "application/json"}
    login = requests.post(f"{system.url}/auth/login", data=login_body, headers=json_headers, timeout=10)
    create = requests.post(
        f"{system.url}/api/patients",
        data=patient_body,
        timeout=10,
        headers={**json_headers, "Authorization": f"Bearer {token}"},
    )
    for response in (login, create):
        assert 400 <= response.status_code < 500, (fault, response.status_code, response.text)
        assert response.json()["message"], fault


@pytest.mark.parametrize(
    "target",
    [
        b"/api/patients?name=%FF",
        b"/api/patients?name=%ED%A0%80",
        b"/api/patients?email=a%00b",
        b"/api/patients/%FF",
        b"/api/billing/accounts/%FF",
        b"/api/billing/accounts/x?patientId=%FF",
        b"/api/billing/accounts/x?x=%FF",
        b"/api/patients?name=\xff",
        b"/api/patients/\xff",
        b"/api/billing/accounts/\xff",
        b"/auth/login\xff",
    ],
)
def test_bad_paths_and_query_strings_are_4xx(system, token, target):
    status = raw_request(
        system, b"GET " + target + b" HTTP/1.1", b"Authorization: Bearer " + token.encode() + b"\r\n"
    )
    assert 400 <= status < 500, (target, status)
