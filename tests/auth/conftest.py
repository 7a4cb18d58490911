"""An auth app on a real, migrated database (SQLite and PostgreSQL)."""

import pytest
from flask.testing import FlaskClient

from auth import MIGRATIONS_DIR, create_app
from auth.config import Config
from auth.extensions import db
from auth.seed import seed_users
from tests.auth.helpers import FAST_ARGON2, JWT_SECRET
from tests.support import migrated_apps

AUTH_ENV_VARS = (
    "PMS_ENV",
    "JWT_SECRET",
    "JWT_TTL_SECONDS",
    "LOGIN_MAX_FAILURES",
    "LOGIN_MAX_FAILURES_PER_CLIENT",
    "LOGIN_WINDOW_SECONDS",
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
    "ARGON2_TIME_COST",
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "AUTH_DATABASE_URL",
    "DATABASE_URL",
)


class NoSecretsClient(FlaskClient):
    """Every response in every test is checked: no password hash ever leaves."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        assert b"$argon2" not in response.get_data()
        assert b"password_hash" not in response.get_data()
        return response


@pytest.fixture
def make_app(database_url, tmp_path, monkeypatch):
    """Builds a migrated (and by default seeded) app; settings override the test defaults."""
    for name in AUTH_ENV_VARS:
        monkeypatch.delenv(name, raising=False)

    def with_checked_responses(config):
        app = create_app(config)
        app.test_client_class = NoSecretsClient
        return app

    with migrated_apps(with_checked_responses, MIGRATIONS_DIR, db) as build:

        def make(seed=True, **settings):
            config = Config(
                **{
                    "DATABASE_URL": database_url,
                    "DATA_DIR": str(tmp_path / "data"),
                    "ENV": "dev",
                    "JWT_SECRET": JWT_SECRET,
                    **FAST_ARGON2,
                    **settings,
                }
            )
            return build(config, seed_users if seed else None)

        yield make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
