"""Patient events through a real broker: a deleted patient's account closes."""
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from billing.events import PatientEventConsumer
from pms_common.events import CREATED, DELETED, PATIENT_TOPIC, UPDATED, PatientEvent
from pms_common.kafka import consumer_config, ensure_topics, producer_config
from pms_common.protos import billing_service_pb2 as pb
from tests.billing.conftest import new_patient_request
from tests.support import wait_for


@pytest.fixture
def group_id():
    return f"billing-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def consumer(store, broker, group_id):
    ensure_topics(broker.bootstrap, [PATIENT_TOPIC])
    running = PatientEventConsumer(store, broker.bootstrap, group_id, PATIENT_TOPIC,
                                   poll_seconds=0.1).start()
    yield running
    running.stop()


@pytest.fixture
def produce(broker):
    producer = Producer(producer_config(broker.bootstrap))
    delivered = []

    def send(key, value):
        producer.produce(PATIENT_TOPIC, key=key, value=value,
                         on_delivery=lambda err, msg: delivered.append(err or msg))
        assert producer.flush(10) == 0
        assert not isinstance(delivered[-1], Exception) and delivered[-1].error() is None
        return delivered[-1]

    return send


def event(patient_id, event_type):
    return PatientEvent(patientId=str(patient_id), name="Ada Lovelace", email="ada@example.com",
                        event_type=event_type, event_id=str(uuid.uuid4())).SerializeToString()


def status_of(billing, patient_id):
    return billing.stub.GetBillingAccount(pb.GetBillingAccountRequest(patientId=str(patient_id))).status


def test_patient_deleted_closes_the_account(billing, consumer, produce):
    patient_id = uuid.uuid4()
    billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    produce(str(patient_id), event(patient_id, DELETED))
    wait_for(lambda: status_of(billing, patient_id) == "CLOSED", timeout=30,
             message="account closed by PATIENT_DELETED")


def test_bad_messages_are_skipped_and_committed_past(billing, consumer, produce, broker, group_id,
                                                     caplog):
    patient_id = uuid.uuid4()
    billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    key = str(patient_id)  # one key: all land in one partition, in this order
    produce(key, b"\xff\xfe not a protobuf")
    produce(key, PatientEvent(patientId="not-a-uuid", event_type=DELETED).SerializeToString())
    produce(key, PatientEvent(patientId=key, event_type="PATIENT_EXPLODED").SerializeToString())
    produce(key, event(patient_id, CREATED))
    produce(key, event(patient_id, UPDATED))
    produce(key, event(uuid.uuid4(), DELETED))  # a patient without an account
    last = produce(key, event(patient_id, DELETED))

    wait_for(lambda: status_of(billing, patient_id) == "CLOSED", timeout=30,
             message="account closed after the bad messages")
    consumer.stop()
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipped a message")]
    assert len(skipped) >= 3  # the earliest offset of a new group may show older ones too

    # Everything up to the delete is committed: a restart would not stall on the garbage.
    probe = Consumer(consumer_config(broker.bootstrap, group_id))
    try:
        [committed] = probe.committed([TopicPartition(PATIENT_TOPIC, last.partition())], timeout=10)
    finally:
        probe.close()
    assert committed.offset == last.offset() + 1
