"""The kit's error answers on every Flask part (pms_common.web): one shape,
{code, status, message, errors?}, with a message a person can act on even
where the code that raised the error gave none, and a 415 naming
application/json for a body sent as anything else. The patient API's own
cases are in tests/patient/test_error_messages.py."""

import json
from http import HTTPStatus

import pytest

import analytics
import auth
from analytics.config import Config as AnalyticsConfig
from analytics.extensions import db as analytics_db
from auth.config import Config as AuthConfig
from auth.extensions import db as auth_db
from auth.seed import DEV_USER_EMAIL, DEV_USER_PASSWORD, seed_users
from pms_common.identity import USER
from tests.auth.helpers import ADMIN_IDENTITY, FAST_ARGON2, JWT_SECRET
from tests.support import migrated_apps

LOGIN = {"email": DEV_USER_EMAIL, "password": DEV_USER_PASSWORD}


def error_of(response, code):
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json()
    assert list(body)[:3] == ["code", "status", "message"], body
    assert body["code"] == code and body["status"] == HTTPStatus(code).phrase, body
    assert isinstance(body["message"], str) and body["message"].endswith("."), body
    return body


@pytest.fixture
def auth_client(tmp_path, monkeypatch):
    monkeypatch.delenv("PMS_ENV", raising=False)
    with migrated_apps(auth.create_app, auth.MIGRATIONS_DIR, auth_db) as build:
        config = AuthConfig(
            DATABASE_URL=f"sqlite:///{tmp_path / 'auth.db'}",
            DATA_DIR=str(tmp_path / "data"),
            ENV="dev",
            JWT_SECRET=JWT_SECRET,
            **FAST_ARGON2,
        )
        yield build(config, seed_users).test_client()


@pytest.fixture
def analytics_client(tmp_path):
    with migrated_apps(analytics.create_app, analytics.MIGRATIONS_DIR, analytics_db, role=USER) as build:
        config = AnalyticsConfig(
            DATABASE_URL=f"sqlite:///{tmp_path / 'analytics.db'}",
            DATA_DIR=str(tmp_path / "data"),
            KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        )
        yield build(config).test_client()


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_login_not_sent_as_json_is_415_naming_the_type(auth_client, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = auth_client.post("/login", data=json.dumps(LOGIN), headers=headers)
    body = error_of(response, 415)
    assert "application/json" in body["message"]
    assert body["errors"] == {"headers": {"Content-Type": ["Must be application/json."]}}
    assert auth_client.post("/login", json=LOGIN).status_code == 200


def test_a_post_that_takes_no_body_needs_no_content_type(auth_client):
    token = auth_client.post("/login", json=LOGIN).get_json()["token"]
    response = auth_client.post("/logout", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (200, 204), response.get_data(as_text=True)


def test_auth_s_malformed_user_id_is_404_saying_it_is_not_a_uuid(auth_client):
    body = error_of(auth_client.get("/users/42", headers=ADMIN_IDENTITY), 404)
    assert "'42' is not a valid user id" in body["message"] and "UUID" in body["message"]


def test_auth_s_405_and_422_say_what_to_do(auth_client):
    response = auth_client.get("/login")
    assert error_of(response, 405)["message"] == "GET is not allowed here; this path allows POST."
    assert "POST" in response.headers["Allow"]
    body = error_of(auth_client.post("/login", json={"email": DEV_USER_EMAIL}), 422)
    assert "the field password" in body["message"] and set(body["errors"]["json"]) == {"password"}


def test_analytics_405_and_422_say_what_to_do(analytics_client):
    assert "allows GET" in error_of(analytics_client.post("/analytics/summary"), 405)["message"]
    response = analytics_client.get("/analytics/registrations", query_string={"from": "2024-13"})
    body = error_of(response, 422)
    assert "query parameter from" in body["message"] and set(body["errors"]["query"]) == {"from"}
    assert "/docs" in error_of(analytics_client.get("/analytics/nothing"), 404)["message"]


def test_every_part_s_document_describes_the_one_error_shape(auth_client, analytics_client):
    for client in (auth_client, analytics_client):
        error = client.get("/openapi.json").get_json()["components"]["schemas"]["Error"]
        assert error["properties"]["code"]["description"] == "The HTTP status code"
        assert all("example" in field for field in error["properties"].values()), error
