"""Audit fixtures: an app on a migrated real database (SQLite, and
PostgreSQL when PMS_TEST_POSTGRES_URL is set), its engine, and entries."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from audit import MIGRATIONS_DIR, create_app
from audit.config import Config
from audit.extensions import db
from audit.store import NewEntry
from pms_common.identity import ADMIN
from tests.support import migrated_apps

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_config(database_url, tmp_path, **overrides):
    suffix = uuid.uuid4().hex[:10]
    settings = dict(
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        PATIENT_TOPIC=f"patient-{suffix}",
        DEAD_LETTER_TOPIC=f"patient-{suffix}.dlq",
        CONSUMER_GROUP=f"audit-{suffix}",
        DATA_DIR=str(tmp_path),
        AUDIT_LOG_PATH=str(tmp_path / "gateway-audit.jsonl"),
    )
    return Config(**{**settings, **overrides})


@pytest.fixture
def app_factory():
    """Builds migrated apps whose test clients call as an ADMIN."""
    with migrated_apps(create_app, MIGRATIONS_DIR, db, role=ADMIN) as build:
        yield build


@pytest.fixture
def app(database_url, app_factory, tmp_path):
    return app_factory(make_config(database_url, tmp_path))


@pytest.fixture
def engine(app):
    with app.app_context():
        yield db.engine


@pytest.fixture
def client(app):
    return app.test_client()


def entry(number, **overrides):
    """The number-th made-up entry: a READ a minute after the one before."""
    values = dict(
        time=T0 + timedelta(minutes=number),
        action="READ",
        source=f"test:{number}",
        actor=f"staff{number % 3}@clinic.example",
        actor_role="USER",
        patient_id=str(uuid.UUID(int=number % 5 + 1)),
        request_id=f"request-{number}",
        status=200,
        client_address="10.0.0.1",
    )
    values.update(overrides)
    return NewEntry(**values)
