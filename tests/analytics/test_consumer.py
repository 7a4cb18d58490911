"""The consumer in a thread against the real broker and each real database."""

import time
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa
from confluent_kafka import Producer

from analytics import store
from analytics.consumer import AnalyticsEventConsumer
from analytics.extensions import db
from analytics.models import ConsumerStatus
from pms_common.events import CREATED, DELETED, UPDATED
from pms_common.kafka import producer_config
from tests.support import free_port, wait_for

from .conftest import make_config, running_consumer
from .helpers import committed_total, patient_event, produce, read_topic, summary


@pytest.fixture
def consumer_setup(database_url, app_factory, broker):
    config = make_config(database_url, broker.bootstrap)
    return app_factory(config), config


@pytest.fixture
def sqlite_consumer_setup(app_factory, tmp_path, broker):
    """For Kafka behaviour that does not depend on the kind of database."""
    config = make_config(f"sqlite:///{tmp_path / 'analytics.db'}", broker.bootstrap)
    return app_factory(config), config


def sample_events(created=200, updated=60, deleted=40):
    months = ["2023-12", "2024-01", "2024-02", "2024-03"]
    creates = [
        patient_event(CREATED, registered_date=f"{months[i % 4]}-{i % 28 + 1:02d}") for i in range(created)
    ]
    updates = [patient_event(UPDATED, creates[i].patientId) for i in range(updated)]
    deletes = [patient_event(DELETED, creates[-1 - i].patientId) for i in range(deleted)]
    remaining = Counter(event.registered_date[:7] for event in creates[: created - deleted])
    return creates + updates + deletes, [{"month": m, "count": remaining[m]} for m in sorted(remaining)]


def test_n_events_count_exactly_n_and_redeliveries_change_nothing(consumer_setup, broker):
    app, config = consumer_setup
    client = app.test_client()
    events, registrations = sample_events()
    produce(broker.bootstrap, config.PATIENT_TOPIC, events)
    expected = {
        "patientsCreated": 200,
        "patientsUpdated": 60,
        "patientsDeleted": 40,
        "activePatients": 160,
        "eventsProcessed": 300,
    }

    with running_consumer(app, config):
        wait_for(lambda: summary(client)["eventsProcessed"] == 300, 30, message="300 events counted")
        first = summary(client)
        assert {key: first[key] for key in expected} == expected
        assert client.get("/analytics/registrations").get_json() == registrations
        # Every event again, as a producer retrying or a replay from the start would send them.
        produce(broker.bootstrap, config.PATIENT_TOPIC, events)
        wait_for(
            lambda: committed_total(broker.bootstrap, config.CONSUMER_GROUP, config.PATIENT_TOPIC) == 600,
            20,
            interval=0.3,
            message="the copies consumed",
        )
    assert summary(client) == first
    assert client.get("/analytics/registrations").get_json() == registrations


@pytest.fixture
def counted_batches(monkeypatch):
    """The size of each batch the consumer counts (the real store counts it)."""
    sizes = []
    count_events = store.apply_events

    def counted_batch(connection, events, **kwargs):
        sizes.append(len(events))
        return count_events(connection, events, **kwargs)

    monkeypatch.setattr(store, "apply_events", counted_batch)
    return sizes


def stream_events(app, config, broker, counted_batches, count, every_seconds):
    """Once the running consumer has counted a first event, sends `count`
    events one by one, waits until they are counted and returns the sizes of
    the transactions that counted them."""
    producer = Producer(producer_config(broker.bootstrap))
    produce(broker.bootstrap, config.PATIENT_TOPIC, [patient_event(CREATED)], producer=producer)
    wait_for(lambda: summary(app.test_client())["eventsProcessed"] == 1, 30, message="the consumer up")
    for event in sample_events(created=count, updated=0, deleted=0)[0]:
        producer.produce(config.PATIENT_TOPIC, key=event.patientId, value=event.SerializeToString())
        producer.poll(0)
        time.sleep(every_seconds)
    assert producer.flush(10) == 0
    wait_for(
        lambda: summary(app.test_client())["eventsProcessed"] == count + 1,
        30,
        message=f"{count + 1} events counted",
    )
    stream = counted_batches[1:]
    assert sum(stream) == count
    return stream


def test_a_stream_of_events_shares_transactions_through_the_fetch_wait(
    consumer_setup, broker, counted_batches
):
    """By default (for Tansu, which holds a fetch that finds nothing) there is
    no gather wait: the fetch wait batches (bench/README.md, "Consumers and
    the outbox relay")."""
    app, config = consumer_setup
    assert config.BATCH_WAIT_MS == 0
    with running_consumer(app, config):
        stream = stream_events(app, config, broker, counted_batches, 200, every_seconds=0.005)
    assert len(stream) <= 100, f"{len(stream)} transactions for 200 events: {stream}"


def test_from_a_broker_that_answers_at_once_the_gather_wait_batches(
    database_url, app_factory, broker, counted_batches
):
    """Kafka answers a fetch as soon as an event is there (here: Tansu with a
    1 ms fetch wait); compose and ECS set a 30 ms gather for it."""
    config = make_config(database_url, broker.bootstrap, FETCH_WAIT_MS=1, BATCH_WAIT_MS=30)
    app = app_factory(config)
    with running_consumer(app, config):
        stream = stream_events(app, config, broker, counted_batches, 200, every_seconds=0.002)
    assert len(stream) <= 100, f"{len(stream)} transactions for 200 events: {stream}"


def test_undecodable_messages_go_to_the_dead_letter_topic_and_consumption_goes_on(
    sqlite_consumer_setup, broker
):
    app, config = sqlite_consumer_setup
    key = "one-partition"  # same key: the good event comes after the bad ones
    bad = [
        (b"\x08\x96\x01 not protobuf \xff", "not a PatientEvent protobuf"),
        (patient_event(event_id="").SerializeToString(), "missing event_id"),
        (
            patient_event(event_type="PATIENT_MERGED").SerializeToString(),
            "unknown event_type 'PATIENT_MERGED'",
        ),
        (patient_event(patient_id="patient-7").SerializeToString(), "patientId is not a UUID"),
    ]
    good = patient_event(CREATED)
    produce(
        broker.bootstrap,
        config.PATIENT_TOPIC,
        raw=[
            *[(key, value, [("trace", f"t{i}".encode())]) for i, (value, _) in enumerate(bad)],
            (key, good.SerializeToString(), None),
        ],
    )

    with running_consumer(app, config):
        wait_for(lambda: summary(app.test_client())["eventsProcessed"] == 1, 30, message="good event counted")
    assert committed_total(broker.bootstrap, config.CONSUMER_GROUP, config.PATIENT_TOPIC) == 5

    dead = read_topic(broker.bootstrap, config.DEAD_LETTER_TOPIC, expected=4)
    assert len(dead) == 4
    for (value, reason), message in zip(bad, sorted(dead, key=lambda m: m.offset()), strict=True):
        headers = dict(message.headers())
        assert (message.value(), message.key()) == (value, key.encode())
        assert headers["dlq-reason"].decode().startswith(reason)
        assert headers["dlq-source-topic"].decode() == config.PATIENT_TOPIC
        assert headers["trace"] == f"t{bad.index((value, reason))}".encode()
        assert int(headers["dlq-source-offset"]) == message.offset()  # one partition, same order


class UnreachableDeadLetterConsumer(AnalyticsEventConsumer):
    """Its dead-letter producer talks to a port where no broker listens."""

    def make_dead_letter_producer(self):
        return Producer(producer_config(f"127.0.0.1:{free_port()}", **{"message.timeout.ms": 300}))


def test_a_bad_message_is_not_committed_until_the_dead_letter_topic_takes_it(sqlite_consumer_setup, broker):
    app, config = sqlite_consumer_setup
    client = app.test_client()
    produce(
        broker.bootstrap,
        config.PATIENT_TOPIC,
        raw=[("k", b"garbage", None), ("k", patient_event().SerializeToString(), None)],
    )

    def last_error():
        with app.app_context(), db.engine.connect() as connection:
            return connection.execute(sa.select(ConsumerStatus.last_error)).scalar()

    with running_consumer(app, config, UnreachableDeadLetterConsumer) as consumer:
        wait_for(lambda: "dead-letter topic took 0 of 1" in (last_error() or ""), 30, message="DLQ failure")
        # Stuck before the bad message: the good one after it waits too, nothing is committed.
        assert summary(client)["eventsProcessed"] == 0
        assert committed_total(broker.bootstrap, config.CONSUMER_GROUP, config.PATIENT_TOPIC) == 0
        consumer.producer = Producer(producer_config(broker.bootstrap))  # the topic is back
        wait_for(lambda: summary(client)["eventsProcessed"] == 1, 30, message="counted after the DLQ is back")
    assert [m.value() for m in read_topic(broker.bootstrap, config.DEAD_LETTER_TOPIC, 1)] == [b"garbage"]
    assert committed_total(broker.bootstrap, config.CONSUMER_GROUP, config.PATIENT_TOPIC) == 2


def test_readiness_goes_red_when_the_consumer_stops(app_factory, tmp_path, broker):
    config = make_config(
        f"sqlite:///{tmp_path / 'analytics.db'}",
        broker.bootstrap,
        HEARTBEAT_SECONDS=0.2,
        CONSUMER_STALE_SECONDS=1.0,
    )
    client = app_factory(config).test_client()
    with running_consumer(client.application, config):
        wait_for(lambda: client.get("/health/ready").status_code == 200, 20, message="ready")
    wait_for(lambda: client.get("/health/ready").status_code == 503, 5, message="not ready once stopped")
    assert "last heartbeat" in client.get("/health/ready").get_json()["checks"]["consumer"]


def test_the_consumer_waits_for_a_broker_that_is_down_at_start(app_factory, tmp_path, own_broker):
    config = make_config(f"sqlite:///{tmp_path / 'analytics.db'}", own_broker.bootstrap)
    app = app_factory(config)
    own_broker.stop()
    with running_consumer(app, config):
        own_broker.start()
        produce(own_broker.bootstrap, config.PATIENT_TOPIC, [patient_event(patient_id=str(uuid.uuid4()))])
        wait_for(lambda: summary(app.test_client())["eventsProcessed"] == 1, 30, message="counted")


def test_the_running_consumer_forgets_ids_older_than_its_dedup_window(sqlite_consumer_setup, broker):
    from datetime import timedelta

    from analytics.models import ProcessedEvent
    from pms_common.models import utcnow

    app, config = sqlite_consumer_setup
    config.DEDUP_HOURS = 24.0
    now = utcnow()
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(
            sa.insert(ProcessedEvent),
            [{"event_id": f"old-{i}", "processed_at": now - timedelta(hours=25)} for i in range(3)]
            + [{"event_id": "within-the-window", "processed_at": now - timedelta(hours=23)}],
        )
    event = patient_event(CREATED)
    produce(broker.bootstrap, config.PATIENT_TOPIC, [event])
    client = app.test_client()
    with running_consumer(app, config):
        wait_for(lambda: summary(client)["eventsProcessed"] == 1, 30, message="the event counted")

        def kept():
            with app.app_context(), db.engine.connect() as connection:
                return set(connection.scalars(sa.select(ProcessedEvent.event_id)))

        wait_for(lambda: kept() == {"within-the-window", event.event_id}, 10, message="old ids forgotten")
