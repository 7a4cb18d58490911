"""Start-up rules: the signing key, seeding, health and the OpenAPI document."""

import secrets
import stat
import threading

import pytest
import sqlalchemy as sa

from auth import create_app
from auth.config import Config, dev_secret
from auth.extensions import db
from auth.models import User
from auth.seed import seed_users
from pms_common.config import ConfigError
from tests.auth.helpers import (
    ADMIN_IDENTITY,
    DEV_USER_EMAIL,
    DEV_USER_PASSWORD,
    JWT_SECRET,
    OTHER_STRONG_KEY,
    bearer,
    login,
    token_for,
)

STRONG_KEY = OTHER_STRONG_KEY


@pytest.mark.parametrize("key", [None, "", "x" * 31])
def test_production_refuses_a_missing_or_short_key(make_app, key):
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        make_app(ENV="production", JWT_SECRET=key)


def test_production_reads_its_key_from_the_environment(make_app, monkeypatch):
    monkeypatch.setenv("PMS_ENV", "production")
    with pytest.raises(ConfigError, match="JWT_SECRET is required in production"):
        Config().signing_key()
    monkeypatch.setenv("JWT_SECRET", STRONG_KEY)
    assert Config().signing_key() == STRONG_KEY.encode()


GUESSABLE_KEYS = ["a" * 48, "changeme" * 6, "password" * 6, "0123456789" * 5]


@pytest.mark.parametrize("env", ["production", "dev"])
@pytest.mark.parametrize("key", GUESSABLE_KEYS)
def test_a_long_but_guessable_key_is_refused_in_one_line(env, key):
    with pytest.raises(ConfigError, match="JWT_SECRET is too easy to guess") as refused:
        Config(ENV=env, JWT_SECRET=key).signing_key()
    assert "\n" not in str(refused.value)


def test_a_random_key_is_accepted():
    for _ in range(5):
        key = secrets.token_urlsafe(48)
        assert Config(ENV="production", JWT_SECRET=key).signing_key() == key.encode()


def test_production_seeds_nobody_without_admin_settings(make_app):
    client = make_app(ENV="production", JWT_SECRET=STRONG_KEY).test_client()
    assert client.get("/users", headers=ADMIN_IDENTITY).get_json() == []
    assert login(client).status_code == 401


def test_production_seeds_the_configured_admin(make_app):
    client = make_app(
        ENV="production",
        JWT_SECRET=STRONG_KEY,
        ADMIN_EMAIL="Boss@Clinic.org",
        ADMIN_PASSWORD="Long-and-mixed-42",
    ).test_client()
    assert [
        (user["email"], user["role"]) for user in client.get("/users", headers=ADMIN_IDENTITY).get_json()
    ] == [("boss@clinic.org", "ADMIN")]
    assert login(client, "boss@clinic.org", "Long-and-mixed-42").status_code == 200


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"ADMIN_EMAIL": "boss@clinic.org", "ADMIN_PASSWORD": "password123"}, "ADMIN_PASSWORD is too weak"),
        ({"ADMIN_EMAIL": "boss@clinic.org", "ADMIN_PASSWORD": "aaaaaaaaaaa1"}, "ADMIN_PASSWORD is too weak"),
        ({"ADMIN_EMAIL": "boss@clinic.org", "ADMIN_PASSWORD": "password1234"}, "ADMIN_PASSWORD is too weak"),
        ({"ADMIN_EMAIL": "boss@clinic.org", "ADMIN_PASSWORD": "Password123!"}, "ADMIN_PASSWORD is too weak"),
        ({"ADMIN_EMAIL": "boss@clinic.org", "ADMIN_PASSWORD": "Boss@Clinic.org-7"}, "contains the email"),
        ({"ADMIN_EMAIL": "boss@clinic.org"}, "set together"),
        ({"ADMIN_PASSWORD": "Long-and-mixed-42"}, "set together"),
        ({"LOGIN_MAX_FAILURES": 0}, "LOGIN_MAX_FAILURES must be positive"),
    ],
)
def test_invalid_settings_stop_the_start(make_app, settings, message):
    with pytest.raises(ConfigError, match=message):
        make_app(ENV="production", JWT_SECRET=STRONG_KEY, **settings)


def test_dev_key_is_generated_once_and_survives_a_restart(make_app, tmp_path):
    first = make_app(JWT_SECRET=None)
    key_file = tmp_path / "data" / "auth" / "jwt-secret"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes().strip()) >= 32
    token = token_for(first.test_client())

    second = make_app(JWT_SECRET=None)

    assert second.test_client().get("/validate", headers=bearer(token)).status_code == 200
    # An explicit key replaces the dev key: the old token is then refused.
    third = make_app(JWT_SECRET=STRONG_KEY)
    assert third.test_client().get("/validate", headers=bearer(token)).status_code == 401


def test_workers_starting_together_agree_on_one_dev_key(tmp_path):
    path = tmp_path / "auth" / "jwt-secret"
    start = threading.Barrier(8)
    keys = []

    def read_key():
        start.wait()
        keys.append(dev_secret(path))

    threads = [threading.Thread(target=read_key) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [entry.name for entry in path.parent.iterdir()] == ["jwt-secret"]


def test_dev_seed_is_idempotent(app):
    with app.app_context():
        first_hash = db.session.scalar(sa.select(User.password_hash))
        seed_users(app)
        seed_users(app)
        rows = db.session.execute(sa.select(User.email, User.role, User.password_hash)).all()
    assert rows == [(DEV_USER_EMAIL, "ADMIN", first_hash)]
    assert login(app.test_client(), DEV_USER_EMAIL, DEV_USER_PASSWORD).status_code == 200


def test_readiness_checks_the_database(client):
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "UP"}


def test_readiness_reports_an_unreachable_database(tmp_path):
    # Nothing listens on port 1: the check must fail, and say so, without raising.
    app = create_app(
        Config(
            DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
            DATA_DIR=str(tmp_path / "data"),
            JWT_SECRET=JWT_SECRET,
        )
    )
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"].startswith("DOWN")


def test_openapi_document_is_served_for_the_gateway_prefix(client):
    spec = client.get("/openapi.json").get_json()

    assert spec["servers"][0]["url"] == "/auth"
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    paths = spec["paths"]
    assert "security" not in paths["/login"]["post"]
    for path, method in (
        ("/validate", "get"),
        ("/logout", "post"),
        ("/password", "post"),
        ("/users", "get"),
        ("/users", "post"),
        ("/users/{user_id}", "get"),
        ("/users/{user_id}", "patch"),
    ):
        assert paths[path][method]["security"] == [{"bearerAuth": []}], (path, method)
    for path, method in (
        ("/users", "get"),
        ("/users", "post"),
        ("/users/{user_id}", "get"),
        ("/users/{user_id}", "patch"),
    ):
        assert {"401", "403"} <= set(paths[path][method]["responses"]), (path, method)
    assert {"401", "429"} <= set(paths["/login"]["post"]["responses"])
    assert {"204", "401", "422", "429"} <= set(paths["/password"]["post"]["responses"])
    assert "409" in paths["/users/{user_id}"]["patch"]["responses"]
    assert "password" not in spec["components"]["schemas"]["User"]["properties"]
    assert "disabled" in spec["components"]["schemas"]["User"]["properties"]
