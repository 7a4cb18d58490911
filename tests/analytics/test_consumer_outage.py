"""The consumer outlives its database and its broker: while either is away
it waits (said once), readiness says it is not doing its work, and it
counts what arrived meanwhile once the peer is back."""

import logging
import time
import uuid

import pytest

from pms_common.kafka import ensure_topics
from tests.support import wait_for
from tests.tcp_switch import switched_postgres

from .conftest import make_config, running_consumer
from .helpers import patient_event, produce, summary


def ready(client):
    return client.get("/health/ready").status_code == 200


def consumer_lines(caplog, config):
    activity = f"consuming {config.PATIENT_TOPIC} as {config.CONSUMER_GROUP}"
    return [record for record in caplog.records if getattr(record, "activity", None) == activity]


def assert_waited_once_for(lines, peer):
    waiting, resumed = lines  # once each, not once per try
    assert (waiting.getMessage(), waiting.levelname, waiting.peer) == (
        "waiting for a peer; retrying with backoff",
        "WARNING",
        peer,
    )
    assert (resumed.getMessage(), resumed.peer) == ("peer back; resumed", peer)


@pytest.fixture
def postgres(tmp_path):
    with switched_postgres(tmp_path, "analytics_outage") as (url, switch):
        yield url, switch


def test_a_database_outage_is_waited_out_and_reported_not_ready(postgres, app_factory, broker, caplog):
    caplog.set_level(logging.INFO)
    postgres_url, switch = postgres
    timings = {"HEARTBEAT_SECONDS": 0.2, "CONSUMER_STALE_SECONDS": 1.0}
    config = make_config(postgres_url, broker.bootstrap, **timings)
    api = app_factory(config).test_client()  # readiness and figures, on a database that stays
    consumer_config = make_config(
        switch.url_for(postgres_url),
        broker.bootstrap,
        **timings,
        **{name: getattr(config, name) for name in ("PATIENT_TOPIC", "DEAD_LETTER_TOPIC", "CONSUMER_GROUP")},
    )
    consumer_app = app_factory(consumer_config)
    with running_consumer(consumer_app, consumer_config) as consumer:
        produce(broker.bootstrap, config.PATIENT_TOPIC, [patient_event()])
        wait_for(lambda: summary(api)["eventsProcessed"] == 1 and ready(api), 30, message="counted, ready")

        switch.off()
        produce(broker.bootstrap, config.PATIENT_TOPIC, [patient_event()])
        wait_for(lambda: not consumer.ready, 20, message="the consumer waiting")
        wait_for(lambda: not ready(api), 10, message="readiness red")
        assert "last heartbeat" in api.get("/health/ready").get_json()["checks"]["consumer"]
        time.sleep(2)  # more tries, still one line

        switch.on()
        wait_for(
            lambda: summary(api)["eventsProcessed"] == 2, 30, message="counted after the database is back"
        )
        wait_for(lambda: ready(api), 10, message="ready again")
        assert consumer.ready
    assert_waited_once_for(consumer_lines(caplog, consumer_config), "database")


def test_a_broker_outage_is_waited_out_and_reported_not_ready(app_factory, tmp_path, own_broker, caplog):
    caplog.set_level(logging.INFO)
    config = make_config(
        f"sqlite:///{tmp_path / 'analytics.db'}",
        own_broker.bootstrap,
        HEARTBEAT_SECONDS=0.2,
        CONSUMER_STALE_SECONDS=1.0,
    )
    api = app_factory(config).test_client()
    with running_consumer(api.application, config) as consumer:
        produce(own_broker.bootstrap, config.PATIENT_TOPIC, [patient_event(patient_id=str(uuid.uuid4()))])
        wait_for(lambda: summary(api)["eventsProcessed"] == 1 and ready(api), 30, message="counted, ready")

        own_broker.stop()
        wait_for(lambda: not consumer.ready, 20, message="the consumer waiting")
        wait_for(lambda: not ready(api), 10, message="readiness red")

        own_broker.start()  # an empty broker: Tansu keeps its topics in memory
        ensure_topics(
            own_broker.bootstrap,
            [config.PATIENT_TOPIC, config.DEAD_LETTER_TOPIC],
            partitions=config.TOPIC_PARTITIONS,
        )
        wait_for(lambda: consumer.ready and ready(api), 30, message="ready again")
        produce(own_broker.bootstrap, config.PATIENT_TOPIC, [patient_event(patient_id=str(uuid.uuid4()))])
        wait_for(lambda: summary(api)["eventsProcessed"] == 2, 60, message="counted after the broker is back")
    assert_waited_once_for(consumer_lines(caplog, config), "broker")
