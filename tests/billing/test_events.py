"""Patient events through a real broker: a deleted patient's account closes."""

import logging
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime

import grpc
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from billing import Config, create_server, readiness_probe, set_ready
from billing.consumer import BillingEventConsumer, consumer_settings
from billing.store import Store
from pms_common.config import ConfigError
from pms_common.consumer import ConsumerSettings
from pms_common.events import CREATED, DEAD_LETTER_TOPIC, DELETED, PATIENT_TOPIC, UPDATED, PatientEvent
from pms_common.kafka import consumer_config, ensure_topics, producer_config
from pms_common.protos import billing_service_pb2 as pb
from tests.analytics.helpers import read_topic
from tests.billing.conftest import new_patient_request
from tests.billing.test_server import NOT_SERVING, SERVING, health_of
from tests.support import wait_for
from tests.tcp_switch import switched_postgres


@pytest.fixture
def settings(broker):
    """A group of its own on topics of its own."""
    suffix = uuid.uuid4().hex[:8]
    topics = ConsumerSettings(
        broker.bootstrap,
        f"billing-test-{suffix}",
        topic=f"{PATIENT_TOPIC}-{suffix}",
        dead_letter_topic=f"{DEAD_LETTER_TOPIC}-{suffix}",
    )
    ensure_topics(broker.bootstrap, [topics.topic, topics.dead_letter_topic])
    return topics


@pytest.fixture
def consumer(store, settings):
    running = BillingEventConsumer(store, settings).start()
    yield running
    running.stop()


@pytest.fixture
def produce(broker, settings):
    producer = Producer(producer_config(broker.bootstrap))
    delivered = []

    def send(key, value):
        producer.produce(
            settings.topic, key=key, value=value, on_delivery=lambda err, msg: delivered.append(err or msg)
        )
        assert producer.flush(10) == 0
        assert not isinstance(delivered[-1], Exception) and delivered[-1].error() is None
        return delivered[-1]

    return send


def event(patient_id, event_type):
    return PatientEvent(
        patientId=str(patient_id),
        name="Ada Lovelace",
        email="ada@example.com",
        event_type=event_type,
        event_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC).isoformat(),
        registered_date="2024-05-01",
    ).SerializeToString()


def status_of(billing, patient_id):
    return billing.stub.GetBillingAccount(pb.GetBillingAccountRequest(patientId=str(patient_id))).status


def test_patient_deleted_closes_the_account(billing, consumer, produce):
    patient_id = uuid.uuid4()
    billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    produce(str(patient_id), event(patient_id, DELETED))
    wait_for(
        lambda: status_of(billing, patient_id) == "CLOSED",
        timeout=30,
        message="account closed by PATIENT_DELETED",
    )


def test_bad_messages_are_dead_lettered_and_committed_past(billing, consumer, produce, broker, settings):
    """The decoding contract analytics has too: a message that is not a valid
    PatientEvent goes to the dead-letter topic with the reason."""
    patient_id = uuid.uuid4()
    billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    key = str(patient_id)  # one key: all land in one partition, in this order
    bad = [
        b"\xff\xfe not a protobuf",
        PatientEvent(patientId="not-a-uuid", event_type=DELETED).SerializeToString(),
        PatientEvent(patientId=key, event_type="PATIENT_EXPLODED").SerializeToString(),
    ]
    for value in bad:
        produce(key, value)
    produce(key, event(patient_id, CREATED))
    produce(key, event(patient_id, UPDATED))
    produce(key, event(uuid.uuid4(), DELETED))  # a patient without an account
    last = produce(key, event(patient_id, DELETED))

    wait_for(
        lambda: status_of(billing, patient_id) == "CLOSED",
        timeout=30,
        message="account closed after the bad messages",
    )
    consumer.stop()
    dead = sorted(
        read_topic(broker.bootstrap, settings.dead_letter_topic, expected=3),
        key=lambda message: message.offset(),
    )
    assert [message.value() for message in dead] == bad
    headers = [dict(message.headers()) for message in dead]
    assert [h["dlq-reason"].decode().split(":")[0] for h in headers] == [
        "not a PatientEvent protobuf",
        "missing event_id",
        "unknown event_type 'PATIENT_EXPLODED'",
    ]
    assert {h["dlq-consumer-group"] for h in headers} == {settings.group_id.encode()}

    # Everything up to the delete is committed: a restart would not stall on the garbage.
    probe = Consumer(consumer_config(broker.bootstrap, settings.group_id))
    try:
        [committed] = probe.committed([TopicPartition(settings.topic, last.partition())], timeout=10)
    finally:
        probe.close()
    assert committed.offset == last.offset() + 1


@contextmanager
def health_following(store, consumer, database_url):
    """A billing server whose health follows its store and its consumer, as `python -m billing` runs it."""
    config = Config(DATABASE_URL=database_url, EVENTS_ENABLED=False)
    server, port, frame = create_server(config, "127.0.0.1:0", store=store)
    frame.start()
    set_ready(frame, store)
    frame.follow(readiness_probe(store, consumer), interval=0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        frame.draining.set()
        server.stop(None)


def test_while_the_broker_is_away_the_part_says_so_and_its_rpcs_still_serve(
    store, database_url, own_broker, caplog
):
    caplog.set_level(logging.INFO)
    settings = ConsumerSettings(own_broker.bootstrap, f"billing-test-{uuid.uuid4().hex[:8]}")
    consumer = BillingEventConsumer(store, settings).start()
    try:
        with health_following(store, consumer, database_url) as channel:
            wait_for(lambda: health_of(channel, "") == SERVING, 10, message="SERVING")
            own_broker.stop()
            wait_for(lambda: health_of(channel, "") == NOT_SERVING, 20, message="the whole part NOT_SERVING")
            assert health_of(channel, "BillingService") == SERVING
            own_broker.start()
            wait_for(lambda: health_of(channel, "") == SERVING, 30, message="SERVING again")
    finally:
        consumer.stop()
    changes = [(r.serving, r.working) for r in caplog.records if r.getMessage() == "health changed"]
    assert changes == [(True, True), (True, False), (True, True)]  # each change said once


@pytest.fixture
def postgres(tmp_path):
    with switched_postgres(tmp_path, "billing_outage") as (url, switch):
        yield url, switch


def test_a_delete_that_comes_while_the_database_is_away_closes_the_account_once_it_is_back(
    postgres, settings, produce, caplog
):
    caplog.set_level(logging.INFO)
    postgres_url, switch = postgres
    Store(postgres_url).migrate()
    store = Store(switch.url_for(postgres_url))
    patient_id = uuid.uuid4()
    store.open_account(patient_id, "Ada Lovelace", "ada@example.com")
    consumer = BillingEventConsumer(store, settings).start()
    try:
        with health_following(store, consumer, postgres_url) as channel:
            wait_for(lambda: health_of(channel, "") == SERVING, 10, message="SERVING")
            switch.off()
            wait_for(
                lambda: health_of(channel, "BillingService") == NOT_SERVING,
                10,
                message="NOT_SERVING without its store",
            )
            produce(str(patient_id), event(patient_id, DELETED))
            wait_for(lambda: not consumer.ready, 30, message="the consumer waiting for its database")
            assert health_of(channel, "") == NOT_SERVING
            switch.on()
            wait_for(lambda: health_of(channel, "") == SERVING, 30, message="SERVING again")
            wait_for(
                lambda: store.get_account(patient_id).status == "CLOSED", 30, message="the account closed"
            )
    finally:
        consumer.stop()
        store.dispose()
    waits = [r for r in caplog.records if getattr(r, "activity", "").startswith("consuming")]
    assert [(r.getMessage(), r.peer) for r in waits] == [
        ("waiting for a peer; retrying with backoff", "database"),
        ("peer back; resumed", "database"),
    ]


def test_the_consumer_asks_the_broker_to_hold_a_fetch_as_long_as_configured():
    assert consumer_settings(Config(EVENTS_FETCH_WAIT_MS=750)).client_config()["fetch.wait.max.ms"] == 750
    assert consumer_settings(Config()).client_config()["fetch.wait.max.ms"] == 3000
    with pytest.raises(ConfigError, match="EVENTS_FETCH_WAIT_MS must be at least 1, got 0"):
        Config(EVENTS_FETCH_WAIT_MS=0).check()
