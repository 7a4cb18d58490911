"""Building, producing and reading patient events for the analytics tests."""

import time
import uuid
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from pms_common.events import CREATED, PatientEvent
from pms_common.kafka import consumer_config, producer_config


def patient_event(
    event_type=CREATED, patient_id=None, event_id=None, occurred_at=None, registered_date="2024-01-15"
):
    return PatientEvent(
        patientId=str(uuid.uuid4()) if patient_id is None else patient_id,
        name="Ada Lovelace",
        email="ada@example.com",
        event_type=event_type,
        event_id=str(uuid.uuid4()) if event_id is None else event_id,
        occurred_at=occurred_at or datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        address="1 Main St",
        date_of_birth="1990-12-10",
        registered_date=registered_date,
    )


def produce(bootstrap, topic, events=(), raw=(), producer=None):
    """Sends PatientEvents (keyed by patient id) and raw (key, value, headers)
    triples, in that order; fails unless the broker took every one."""
    producer = producer or Producer(producer_config(bootstrap))
    failures = []

    def delivered(err, _message):
        if err is not None:
            failures.append(err)

    for event in events:
        producer.produce(topic, key=event.patientId, value=event.SerializeToString(), on_delivery=delivered)
        producer.poll(0)
    for key, value, headers in raw:
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
    assert producer.flush(10) == 0 and not failures, f"produce failed: {failures[:3]}"


def read_topic(bootstrap, topic, expected, timeout=20.0):
    """Reads `expected` messages from the start of every partition of a topic
    (assigned directly: no group to join)."""
    consumer = Consumer(consumer_config(bootstrap, f"reader-{uuid.uuid4().hex}"))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages, deadline = [], time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def committed_total(bootstrap, group, topic):
    """Sum of the group's committed offsets on the topic (messages it has done)."""
    consumer = Consumer(consumer_config(bootstrap, group))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in committed)


def summary(client):
    response = client.get("/analytics/summary")
    assert response.status_code == 200, response.get_json()
    return response.get_json()
