"""The consumer, on a real broker and database: each patient change's event
becomes one entry with the request's actor, role, request id, client
address and the changed fields' names (never their values), however often
the event is delivered."""

import threading
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from audit.consumer import AuditEventConsumer
from audit.extensions import db
from audit.store import entries_table, verify
from pms_common.events import CREATED, DELETED, UPDATED
from pms_common.protos.patient_event_pb2 import AuditContext
from tests.analytics.helpers import patient_event, produce
from tests.support import wait_for

from .conftest import make_config


def stored(engine):
    with engine.connect() as connection:
        return connection.execute(sa.select(entries_table).order_by(entries_table.c.id)).all()


def test_each_change_once_with_its_context(database_url, app_factory, broker, tmp_path):
    config = make_config(database_url, tmp_path, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
    app = app_factory(config)
    patient = str(uuid.uuid4())
    context = AuditContext(
        actor_email="admin@clinic.example",
        actor_role="ADMIN",
        request_id="req-1",
        client_address="203.0.113.7",
        changed_fields=["name", "address"],
    )
    created = patient_event(CREATED, patient_id=patient)
    created.audit.CopyFrom(
        AuditContext(actor_email="admin@clinic.example", actor_role="ADMIN", request_id="req-0")
    )
    updated = patient_event(UPDATED, patient_id=patient)
    updated.audit.CopyFrom(context)
    seeded = patient_event(DELETED, patient_id=patient)  # no context: a change from no request
    stop = threading.Event()
    with app.app_context():
        consumer = AuditEventConsumer(config, db.engine, stop)
        engine = db.engine
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        # The update twice: a redelivery after a crash, say.
        produce(broker.bootstrap, config.PATIENT_TOPIC, [created, updated, updated, seeded])
        wait_for(lambda: len(stored(engine)) >= 3, 30, message="three entries")
        produce(broker.bootstrap, config.PATIENT_TOPIC, [created])
        marker = patient_event(CREATED)
        produce(broker.bootstrap, config.PATIENT_TOPIC, [marker])
        wait_for(lambda: len(stored(engine)) == 4, 30, message="the marker's entry")
    finally:
        stop.set()
        thread.join(20)
    rows = {row.source: row for row in stored(engine)}
    assert set(rows) == {f"event:{event.event_id}" for event in (created, updated, seeded, marker)}
    update = rows[f"event:{updated.event_id}"]
    assert (update.action, update.actor, update.actor_role, update.patient_id) == (
        "UPDATE",
        "admin@clinic.example",
        "ADMIN",
        patient,
    )
    assert (update.request_id, update.client_address, update.status, update.fields) == (
        "req-1",
        "203.0.113.7",
        200,
        '["address", "name"]',
    )
    assert update.time == datetime.fromisoformat(updated.occurred_at.replace("Z", "+00:00")).astimezone(UTC)
    delete = rows[f"event:{seeded.event_id}"]
    assert (delete.action, delete.actor, delete.status, delete.fields) == ("DELETE", None, None, None)
    assert rows[f"event:{created.event_id}"].status == 201
    # The events carry the patient's name, email and address; the trail keeps none of them.
    for row in rows.values():
        text = " ".join(str(value) for value in row._mapping.values())
        assert "Ada" not in text and "ada@example.com" not in text and "Main St" not in text
    with engine.connect() as connection:
        assert verify(connection).ok
