"""auth's migrations: 0002 re-keys existing emails, and the migrated schema
is the one the models describe, on SQLite and PostgreSQL."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from auth import MIGRATIONS_DIR, create_app
from auth.config import Config
from auth.extensions import db, migrate
from tests.auth.conftest import AUTH_ENV_VARS
from tests.auth.helpers import FAST_ARGON2, JWT_SECRET, login

VERSION_TABLE = "alembic_version_auth"
# As 0001 left them: lower-cased, not NFKC-normalised or case-folded.
OLD_ROWS = [
    ("\uff44\uff55\uff50@test.com", True),  # full-width "dup": its key is taken by the next row
    ("dup@test.com", False),
    ("stra\u00dfe@clinic.org", False),  # ß case-folds to ss
    ("\uff4e\uff45\uff57@test.com", False),  # full-width "new": its key is free
    ("plain@test.com", False),
]


@pytest.fixture
def auth_app(database_url, tmp_path, monkeypatch):
    """An auth app whose database nothing has migrated yet."""
    for name in AUTH_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    app = create_app(
        Config(
            DATABASE_URL=database_url,
            DATA_DIR=str(tmp_path / "data"),
            ENV="dev",
            JWT_SECRET=JWT_SECRET,
            **FAST_ARGON2,
        )
    )
    migrate.use_alembic(app, MIGRATIONS_DIR)
    yield app
    with app.app_context():
        db.engine.dispose()


def insert_old_users(app):
    users = sa.table(
        "users",
        sa.column("id", sa.Uuid),
        sa.column("email"),
        sa.column("password_hash"),
        sa.column("role"),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    started = datetime.now(UTC)
    password_hash = app.extensions["passwords"].hash("Correct-horse-42")
    with db.engine.begin() as connection:
        connection.execute(
            users.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "email": email,
                    "password_hash": password_hash,
                    "role": "USER",
                    "created_at": started + timedelta(seconds=index),
                }
                for index, (email, _disabled) in enumerate(OLD_ROWS)
            ],
        )


def test_0002_re_keys_emails_and_disables_a_user_whose_key_is_taken(auth_app):
    with auth_app.app_context():
        upgrade(directory=MIGRATIONS_DIR, revision="0001")
        insert_old_users(auth_app)

        upgrade(directory=MIGRATIONS_DIR)

        with db.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT email, disabled, token_generation, kept_jti FROM users ORDER BY created_at")
            ).all()
    assert [(email, bool(disabled)) for email, disabled, _, _ in rows] == [
        ("\uff44\uff55\uff50@test.com", True),
        ("dup@test.com", False),
        ("strasse@clinic.org", False),
        ("new@test.com", False),
        ("plain@test.com", False),
    ]
    assert {(generation, kept) for _, _, generation, kept in rows} == {(0, None)}
    client = auth_app.test_client()
    assert login(client, "Stra\u00dfe@clinic.org", "Correct-horse-42").status_code == 200
    assert login(client, "dup@test.com", "Correct-horse-42").status_code == 200


def test_the_migrated_schema_is_the_models_and_downgrades(auth_app):
    with auth_app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(context, db.metadata) == []

        downgrade(directory=MIGRATIONS_DIR, revision="0001")
        columns = {column["name"] for column in sa.inspect(db.engine).get_columns("users")}
        assert not {"disabled", "token_generation", "kept_jti"} & columns
        upgrade(directory=MIGRATIONS_DIR)
        columns = {column["name"] for column in sa.inspect(db.engine).get_columns("users")}
        assert {"disabled", "token_generation", "kept_jti"} <= columns
