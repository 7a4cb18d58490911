"""A body sent chunked (no Content-Length) that is larger than the service's
MAX_CONTENT_LENGTH is refused with 413, as one with a Content-Length is, in
every Flask service that reads bodies (the shared check, pms_common.web); one
within the limit is read whole. Through a real HTTP server, so the body
really arrives chunked."""

import json
from contextlib import contextmanager

import pytest
import requests

import auth
import patient
from auth.config import Config as AuthConfig
from auth.extensions import db as auth_db
from auth.seed import DEV_USER_EMAIL, DEV_USER_PASSWORD, seed_users
from patient.config import Config as PatientConfig
from patient.extensions import db as patient_db
from pms_common.identity import ADMIN
from tests.auth.helpers import FAST_ARGON2, JWT_SECRET
from tests.http_server import serving_over_http
from tests.patient.conftest import VALID
from tests.support import free_port, identity_headers, migrated_apps

ONE_MEGABYTE = 1024 * 1024
AS_ADMIN = identity_headers(ADMIN)


def pieces(body, size=8192):
    """The body as a generator: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def send_chunked(method, url, body, headers=None):
    return requests.request(
        method,
        url,
        data=pieces(body),
        headers={"Content-Type": "application/json", **AS_ADMIN, **(headers or {})},
        timeout=30,
    )


def padded_to(document, length):
    """The document as JSON bytes, padded with trailing spaces to exactly `length`."""
    raw = json.dumps(document).encode()
    assert len(raw) <= length
    return raw + b" " * (length - len(raw))


def assert_too_large(response):
    assert response.status_code == 413, (response.status_code, response.text[:300])
    assert response.json()["code"] == 413


@contextmanager
def served(create_app, migrations_dir, db, config, seed=None):
    """The part's app on its migrated database, served over HTTP: (base URL, body limit)."""
    with migrated_apps(create_app, migrations_dir, db) as build:
        app = build(config, seed)
        with serving_over_http(app) as base_url:
            yield base_url, app.config["MAX_CONTENT_LENGTH"]


@pytest.fixture
def patient_server(tmp_path):
    # No billing listens there: a create waits briefly, then leaves the account to the retry.
    config = PatientConfig(
        DATABASE_URL=f"sqlite:///{tmp_path / 'patient.db'}",
        DATA_DIR=str(tmp_path / "data"),
        BILLING_ADDRESS=f"127.0.0.1:{free_port()}",
        BILLING_TIMEOUT_SECONDS=0.2,
    )
    with served(patient.create_app, patient.MIGRATIONS_DIR, patient_db, config) as server:
        yield server


@pytest.fixture
def auth_server(tmp_path, monkeypatch):
    monkeypatch.delenv("PMS_ENV", raising=False)
    settings = {"ENV": "dev", "JWT_SECRET": JWT_SECRET, **FAST_ARGON2}
    config = AuthConfig(DATABASE_URL=f"sqlite:///{tmp_path / 'auth.db'}", DATA_DIR=str(tmp_path), **settings)
    with served(auth.create_app, auth.MIGRATIONS_DIR, auth_db, config, seed_users) as server:
        yield server


def test_patient_refuses_a_chunked_body_over_its_limit_and_reads_one_at_it(patient_server):
    base_url, limit = patient_server
    assert_too_large(send_chunked("POST", f"{base_url}/patients", padded_to(VALID, ONE_MEGABYTE)))
    long_address = json.dumps({**VALID, "address": "z" * ONE_MEGABYTE}).encode()
    assert_too_large(send_chunked("POST", f"{base_url}/patients", long_address))
    assert_too_large(send_chunked("POST", f"{base_url}/patients", padded_to(VALID, limit + 1)))

    created = send_chunked("POST", f"{base_url}/patients", padded_to(VALID, limit))
    assert created.status_code == 201, created.text
    url = f"{base_url}/patients/{created.json()['id']}"
    update = {key: VALID[key] for key in ("email", "address", "dateOfBirth")}
    assert_too_large(send_chunked("PUT", url, padded_to({**update, "name": "Too Big"}, ONE_MEGABYTE)))
    renamed = send_chunked("PUT", url, json.dumps({**update, "name": "Chunked"}).encode())
    assert renamed.status_code == 200 and renamed.json()["name"] == "Chunked"
    assert requests.get(url, headers=AS_ADMIN, timeout=30).json()["name"] == "Chunked"


def test_auth_refuses_a_chunked_body_over_its_limit_and_reads_one_within_it(auth_server):
    base_url, limit = auth_server
    login = {"email": DEV_USER_EMAIL, "password": DEV_USER_PASSWORD}
    assert_too_large(send_chunked("POST", f"{base_url}/login", padded_to(login, ONE_MEGABYTE)))
    assert_too_large(send_chunked("POST", f"{base_url}/login", padded_to(login, limit + 1)))
    signed_in = send_chunked("POST", f"{base_url}/login", padded_to(login, limit))
    assert signed_in.status_code == 200 and signed_in.json()["token"]
