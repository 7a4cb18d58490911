"""Analytics fixtures: an app on a migrated real database, a unique topic,
and a consumer running in a thread against the real broker."""

import threading
import uuid
from contextlib import contextmanager

import pytest

from analytics import MIGRATIONS_DIR, create_app
from analytics.config import Config
from analytics.consumer import AnalyticsEventConsumer
from analytics.extensions import db
from pms_common.identity import USER
from tests.support import migrated_apps

PARTITIONS = 3


def make_config(database_url, bootstrap="127.0.0.1:1", **overrides):
    suffix = uuid.uuid4().hex[:10]
    settings = dict(
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        PATIENT_TOPIC=f"patient-{suffix}",
        DEAD_LETTER_TOPIC=f"patient-{suffix}.dlq",
        CONSUMER_GROUP=f"analytics-{suffix}",
        TOPIC_PARTITIONS=PARTITIONS,
    )
    return Config(**{**settings, **overrides})


@pytest.fixture
def app_factory(tmp_path):
    """Builds migrated apps whose test clients call as a USER (reads need no
    more); their engines are closed before the database is dropped."""
    with migrated_apps(create_app, MIGRATIONS_DIR, db, role=USER) as build:

        def build_in_tmp(config):
            config.DATA_DIR = str(tmp_path)
            return build(config)

        yield build_in_tmp


@pytest.fixture
def app(database_url, app_factory):
    """An app on an empty migrated database, no broker."""
    return app_factory(make_config(database_url))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def sqlite_client(app_factory, tmp_path):
    """For what does not depend on the kind of database (request shapes, docs)."""
    return app_factory(make_config(f"sqlite:///{tmp_path / 'analytics.db'}")).test_client()


@contextmanager
def running_consumer(app, config, consumer_class=AnalyticsEventConsumer):
    """Runs the consumer loop in a thread until the block ends."""
    stop = threading.Event()
    with app.app_context():
        consumer = consumer_class(config, db.engine, stop)
    errors = []

    def run():
        try:
            consumer.run()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="analytics-consumer", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive(), "consumer did not stop within 20 s"
    assert not errors, f"consumer failed: {errors[0]!r}"
