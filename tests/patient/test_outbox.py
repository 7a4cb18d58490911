"""Every change leaves an event in the outbox in its own transaction; the
relay publishes it only once the broker acknowledged, so a broker outage
delays events and loses none."""

import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy as sa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from billing.store import accounts
from patient.extensions import db
from patient.models import OutboxEvent
from patient.outbox import WOKEN_IDLE_WAIT_SECONDS, OutboxRelay
from patient.worker import run as run_worker
from pms_common.events import PatientEvent
from pms_common.kafka import consumer_config, ensure_topics
from pms_common.status import STALE_SECONDS, StatusFile, read_status
from pms_common.worker import BROKER, PeerUnavailable, StopEvent
from tests.patient.conftest import VALID
from tests.support import voluntary_switches, wait_for


def outbox_rows(app):
    with app.app_context():
        rows = db.session.execute(sa.select(OutboxEvent).order_by(OutboxEvent.id)).scalars().all()
        db.session.expunge_all()
        return rows


def test_each_change_writes_one_event_with_the_change(app, client):
    created = client.post("/patients", json=VALID).get_json()
    url = f"/patients/{created['id']}"
    client.put(url, json={**{k: VALID[k] for k in ("email", "address", "dateOfBirth")}, "name": "Renamed"})
    client.delete(url)
    rows = outbox_rows(app)
    assert [r.event_type for r in rows] == ["PATIENT_CREATED", "PATIENT_UPDATED", "PATIENT_DELETED"]
    events = [PatientEvent.FromString(r.payload) for r in rows]
    assert {e.patientId for e in events} == {created["id"]}
    assert [e.name for e in events] == ["Ada Lovelace", "Renamed", "Renamed"]
    assert len({e.event_id for e in events}) == 3
    assert all(e.occurred_at.endswith("Z") and e.email == VALID["email"] for e in events)
    assert all(r.published_at is None for r in rows)


def test_a_rejected_change_writes_no_event(app, client):
    client.post("/patients", json=VALID)
    assert client.post("/patients", json={**VALID, "name": "Copy"}).status_code == 409
    assert client.put(f"/patients/{uuid.uuid4()}", json=VALID).status_code == 404
    assert len(outbox_rows(app)) == 1


def consume(bootstrap, topic, count, timeout=30):
    """The first `count` distinct events (delivery is at least once: a repeat
    of an event id is skipped, as consumers do)."""
    consumer = Consumer(consumer_config(bootstrap, f"test-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    received, seen = [], set()
    try:

        def got_all():
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                event = PatientEvent.FromString(message.value())
                if event.event_id not in seen:
                    seen.add(event.event_id)
                    received.append((message.key().decode(), event))
            return len(received) >= count

        wait_for(got_all, timeout=timeout, interval=0, message=f"{count} events on {topic}")
    finally:
        consumer.close()
    return received


def test_broker_down_keeps_events_and_they_arrive_after_restart(app, client, own_broker):
    topic = f"patient-{uuid.uuid4().hex[:8]}"
    own_broker.stop()
    ids = [
        client.post("/patients", json={**VALID, "email": f"p{i}@example.com"}).get_json()["id"]
        for i in range(5)
    ]
    with app.app_context():
        relay = OutboxRelay(own_broker.bootstrap, topic, ack_timeout=1.0)
        # The writes succeeded; the broker took none of their events.
        with pytest.raises(PeerUnavailable) as refused:
            relay.publish_pending()
        assert refused.value.peer == BROKER
        assert relay.backlog() == 5
        own_broker.start()
        ensure_topics(own_broker.bootstrap, [topic])

        def published_all():
            try:
                while relay.publish_pending():
                    pass
            except PeerUnavailable:  # the broker is still coming up
                return False
            return True

        wait_for(published_all, timeout=30, message="relay to publish after the broker came back")
        assert relay.backlog() == 0
        relay.close()
    received = consume(own_broker.bootstrap, topic, 5)
    assert sorted(key for key, _ in received) == sorted(ids)
    assert all(key == event.patientId and event.event_type == "PATIENT_CREATED" for key, event in received)
    assert all(row.published_at is not None for row in outbox_rows(app))


def test_a_relay_woken_after_an_idle_spell_with_the_broker_away_says_so_and_never_looks_stuck(
    make_app, own_broker, tmp_path
):
    # The launcher takes a status file older than STALE_SECONDS for a stuck
    # part. An idle relay rewrites its file once per idle wait; woken late in
    # one, with the broker away, it waits for acknowledgements up to its
    # ack timeout before it can say what it waits for.
    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(own_broker.bootstrap, [topic])
    app = make_app(KAFKA_BOOTSTRAP_SERVERS=own_broker.bootstrap, EVENTS_TOPIC=topic)
    path = tmp_path / "patient-worker.json"
    app.extensions["status_file"] = StatusFile(path)
    client, stop = app.test_client(), StopEvent()
    worker = threading.Thread(target=run_worker, args=(app, stop), name="patient-worker")
    worker.start()
    try:
        client.post("/patients", json=VALID)
        consume(own_broker.bootstrap, topic, 1)
        wait_for(lambda: read_status(path)["idle"], timeout=10, message="the relay to be idle")
        own_broker.stop()
        idle_since = read_status(path)["written_at"]
        time.sleep(max(0.0, idle_since + WOKEN_IDLE_WAIT_SECONDS - 2 - time.time()))
        client.post("/patients", json={**VALID, "email": "grace@example.com"})
        oldest = 0.0

        def reported():
            nonlocal oldest
            status = read_status(path)
            oldest = max(oldest, status["age_s"])
            return status["problems"]

        problems = wait_for(reported, timeout=30, interval=0.1, message="the relay to say the broker is away")
        assert list(problems) == ["outbox relay"] and "waits for the broker" in problems["outbox relay"]
        assert oldest < STALE_SECONDS
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()


def test_one_patients_events_stay_in_order(app, client, broker):
    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    patient_id = client.post("/patients", json=VALID).get_json()["id"]
    for index in range(10):
        client.put(
            f"/patients/{patient_id}",
            json={**{k: VALID[k] for k in ("email", "address", "dateOfBirth")}, "name": f"Name {index}"},
        )
    with app.app_context():
        relay = OutboxRelay(broker.bootstrap, topic)
        assert relay.publish_pending() == 11
        relay.close()
    names = [event.name for _, event in consume(broker.bootstrap, topic, 11)]
    assert names == ["Ada Lovelace"] + [f"Name {index}" for index in range(10)]


def test_the_relay_pauses_not_at_all_in_a_backlog_briefly_under_load_and_longer_while_idle():
    from patient.worker import next_pause

    assert next_pause(0.03, 500, 500, busy_pause=0.03) == 0
    assert next_pause(0.25, 7, 500, busy_pause=0.03) == 0.03
    pauses = [0.0]
    for _ in range(6):
        pauses.append(next_pause(pauses[-1], 0, 500, busy_pause=0.03))
    assert pauses == pytest.approx([0.0, 0.06, 0.12, 0.24, 0.25, 0.25, 0.25])
    # A pause set longer than the idle bound is kept as it is.
    assert next_pause(1.0, 0, 500, busy_pause=1.0) == 1.0


def test_an_idle_relay_is_woken_by_each_change_not_by_its_own_pause(app, client, broker):
    """The lease holder waits to be woken: by PostgreSQL's trigger or SQLite's
    FIFO after a create, an update and a delete; without a change its wait
    runs out, and a stop ends it at once. A change with no relay listening
    still succeeds."""
    import time

    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    stop = StopEvent()
    with app.app_context():
        relay = OutboxRelay(broker.bootstrap, topic)
        try:
            assert relay.publish_pending() == 0 and relay.holds_lease and relay.wakes_on_events
            started = time.monotonic()
            assert not relay.wait_for_events(0.3, stop)
            assert time.monotonic() - started >= 0.3

            created = client.post("/patients", json=VALID).get_json()
            assert relay.wait_for_events(10, stop)
            assert relay.publish_pending() == 1
            assert not relay.wait_for_events(0.2, stop)  # one wake-up per change, all taken

            url = f"/patients/{created['id']}"
            body = {**{k: VALID[k] for k in ("email", "address", "dateOfBirth")}, "name": "Renamed"}
            assert client.put(url, json=body).status_code == 200
            assert relay.wait_for_events(10, stop) and relay.publish_pending() == 1
            assert client.delete(url).status_code == 204
            assert relay.wait_for_events(10, stop) and relay.publish_pending() == 1

            stop.set()
            started = time.monotonic()
            assert not relay.wait_for_events(10, stop)
            assert time.monotonic() - started < 1
        finally:
            relay.close()
    assert client.post("/patients", json={**VALID, "email": "later@example.com"}).status_code == 201
    published = sorted(str(row.event_id) for row in outbox_rows(app) if row.published_at is not None)
    assert len(published) == 3 and sorted(event_ids_on(broker.bootstrap, topic)) == published


def test_an_idle_relay_sleeps_through_its_wait_and_a_stop_ends_it_at_once(app, broker):
    """Waiting to be woken, the relay's thread sleeps: one wait on the wake-up
    (PostgreSQL's session or SQLite's FIFO) and the stop's pipe together, with
    no slices of its own to look at the stop, nor psycopg's, which woke it ten
    times a second. Setting the stop from another thread ends the wait."""
    import threading
    import time

    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    stop, waiter, switches = StopEvent(), threading.get_native_id(), []

    def watch_then_stop():
        time.sleep(0.3)
        switches.append(voluntary_switches(os.getpid(), waiter))
        time.sleep(2.0)
        switches.append(voluntary_switches(os.getpid(), waiter))
        stop.set()

    with app.app_context():
        relay = OutboxRelay(broker.bootstrap, topic)
        watcher = threading.Thread(target=watch_then_stop)
        try:
            assert relay.publish_pending() == 0 and relay.holds_lease and relay.wakes_on_events
            started = time.monotonic()
            watcher.start()
            assert not relay.wait_for_events(30, stop)
            waited = time.monotonic() - started
        finally:
            watcher.join()
            relay.close()
    assert 2.3 <= waited < 5
    assert switches[1] - switches[0] <= 1, f"the waiting thread woke {switches[1] - switches[0]} times in 2 s"


def test_the_idle_worker_looks_at_its_outbox_only_when_woken_or_every_few_seconds(
    make_app, broker, monkeypatch
):
    """Idle, the worker's relay waits to be woken instead of polling, and a
    create still leaves the outbox at once."""
    import threading
    import time

    from patient.outbox import WOKEN_IDLE_WAIT_SECONDS
    from patient.worker import run

    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    app = make_app(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, EVENTS_TOPIC=topic)
    looks = []
    publish_pending = OutboxRelay.publish_pending

    def counted(relay):
        looks.append(time.monotonic())
        return publish_pending(relay)

    monkeypatch.setattr(OutboxRelay, "publish_pending", counted)
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(app, stop))
    worker.start()
    try:
        wait_for(lambda: looks, timeout=15, message="the relay's first look")
        idle_seconds = 2 * WOKEN_IDLE_WAIT_SECONDS + 0.5
        time.sleep(idle_seconds)
        assert len(looks) <= 4, f"{len(looks)} looks at an idle outbox in {idle_seconds} s"
        created_at = time.monotonic()
        assert app.test_client().post("/patients", json=VALID).status_code == 201
        ((_key, event),) = consume(broker.bootstrap, topic, 1)
        assert event.event_type == "PATIENT_CREATED"
        first_look_after = min(look for look in looks if look >= created_at)
        assert first_look_after - created_at < WOKEN_IDLE_WAIT_SECONDS / 2
    finally:
        stop.set()
        worker.join(15)
    assert not worker.is_alive()


def test_the_worker_publishes_and_opens_pending_accounts_then_stops_on_request(make_app, billing, broker):
    import threading

    from patient.worker import run

    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    billing.stop()
    app = make_app(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, EVENTS_TOPIC=topic, BILLING_TIMEOUT_SECONDS=0.2)
    patient = app.test_client().post("/patients", json=VALID).get_json()
    assert patient["billingStatus"] == "PENDING"
    billing.start()

    stop = threading.Event()
    worker = threading.Thread(target=run, args=(app, stop))
    worker.start()
    try:
        ((key, event),) = consume(broker.bootstrap, topic, 1)
        assert key == patient["id"] and event.event_type == "PATIENT_CREATED"
        wait_for(
            lambda: (
                app.test_client().get(f"/patients/{patient['id']}").get_json()["billingStatus"] == "ACTIVE"
            ),
            timeout=15,
            message="the worker to open the account",
        )
    finally:
        stop.set()
        worker.join(15)
    assert not worker.is_alive()


def test_a_create_whose_event_cannot_be_written_leaves_no_patient(app, client, billing):
    """The patient and its event are written as one: when the event's INSERT
    fails (its table renamed away here), no patient row is left without its
    event, and the billing account opened for it is closed again."""
    with app.app_context():
        with db.engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE outbox_events RENAME TO outbox_events_away"))
        try:
            response = client.post("/patients", json=VALID)
        finally:
            with db.engine.begin() as connection:
                connection.execute(sa.text("ALTER TABLE outbox_events_away RENAME TO outbox_events"))
    # SQLite reports the missing table as an outage (503), PostgreSQL as a bug (500).
    assert response.status_code in (500, 503)
    assert response.get_json()["code"] == response.status_code
    assert client.get("/patients", query_string={"email": VALID["email"]}).get_json() == []
    assert outbox_rows(app) == []
    with billing.store.engine.connect() as connection:
        assert connection.execute(sa.select(accounts.c.status)).scalars().all() == ["CLOSED"]


def test_a_create_writes_once_and_no_pool_connection_changes_mode(app, client):
    """On PostgreSQL a create's write is one statement (the patient and its
    event) on a pool that stays in autocommit; the ORM's pool, which updates
    and deletes use, stays transactional. A pool that switched a connection's
    mode at checkout would hand it back switched again, which this sees."""
    from pms_common.db import AUTOCOMMIT_BIND

    with app.app_context():
        engines = dict(db.engines)
    if engines[None].dialect.name != "postgresql":
        assert AUTOCOMMIT_BIND not in engines  # SQLite writes both rows in one transaction instead
        return
    statements = []
    sa.event.listen(
        engines[AUTOCOMMIT_BIND],
        "before_cursor_execute",
        lambda _conn, _cursor, statement, *_: statements.append(statement),
    )
    assert client.post("/patients", json=VALID).status_code == 201
    assert len(statements) == 1 and "INSERT INTO outbox_events" in statements[0]
    assert "INSERT INTO patients" in statements[0]
    with engines[AUTOCOMMIT_BIND].connect() as connection:
        assert connection.connection.dbapi_connection.autocommit is True
    created = client.post("/patients", json={**VALID, "email": "grace@example.com"}).get_json()
    assert (
        client.put(
            f"/patients/{created['id']}", json={**VALID, "email": "grace@example.com", "name": "Grace Hopper"}
        ).status_code
        == 200
    )
    with engines[None].connect() as connection:
        assert connection.connection.dbapi_connection.autocommit is False


def event_ids_on(bootstrap, topic, timeout=15):
    """Every event id the topic holds, a repeat as often as it was sent."""
    consumer = Consumer(
        consumer_config(bootstrap, f"test-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    )
    try:
        partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
        unread, event_ids = set(partitions), []

        def read_to_the_end():
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                event_ids.extend(value.decode() for key, value in message.headers() if key == "event_id")
            elif message is not None and message.error().code() == KafkaError._PARTITION_EOF:
                unread.discard(message.partition())
            return not unread

        wait_for(read_to_the_end, timeout=timeout, interval=0, message=f"the end of {topic}")
    finally:
        consumer.close()
    return event_ids


def outbox_event_ids(app):
    return sorted(str(row.event_id) for row in outbox_rows(app))


def create_patients(client, count, tag):
    for index in range(count):
        assert (
            client.post("/patients", json={**VALID, "email": f"{tag}{index}@example.com"}).status_code == 201
        )


def test_two_relays_on_one_database_take_turns_and_publish_each_event_once(app, client, broker):
    """Two relays (as two copies of patient run them): only the lease holder
    publishes; when it stops, the other takes over where it left off."""
    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    create_patients(client, 3, "first")
    with app.app_context():
        first, second = OutboxRelay(broker.bootstrap, topic), OutboxRelay(broker.bootstrap, topic)
        try:
            assert first.publish_pending() == 3 and first.holds_lease
            create_patients(client, 2, "second")
            assert second.publish_pending() == 0 and not second.holds_lease
            assert second.backlog() == 2
            assert first.publish_pending() == 2
            create_patients(client, 1, "third")
            first.close()  # its lease is free
            assert second.publish_pending() == 1 and second.holds_lease
            assert second.backlog() == 0
        finally:
            first.close()
            second.close()
    assert sorted(event_ids_on(broker.bootstrap, topic)) == outbox_event_ids(app)


# One relay's round in a process of its own, as patient.worker runs it.
RELAY_ROUND = """
import sys
from patient import create_app
from patient.config import Config
from patient.outbox import OutboxRelay

database_url, bootstrap, topic = sys.argv[1:]
with create_app(Config(DATABASE_URL=database_url)).app_context():
    OutboxRelay(bootstrap, topic).publish_pending()
"""


@contextmanager
def outbox_updates_blocked(database_url):
    """Holds a lock that lets the outbox be read but not updated: a relay
    waits at the UPDATE that marks its batch published. Yields a function
    that ends the server sessions waiting at that UPDATE (PostgreSQL): the
    relay marks in autocommit, so PostgreSQL would otherwise still run a
    killed relay's UPDATE once the lock frees, not noticing its client gone."""
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")  # readers go on (WAL); a writer waits

        def end_waiting_updates():
            pass  # SQLite waits in its client: a killed relay's UPDATE died with it

    else:
        connection = psycopg.connect(database_url.replace("+psycopg", ""))
        connection.execute("LOCK TABLE outbox_events IN SHARE MODE")

        def end_waiting_updates():
            with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE outbox_events%'"
                )

    try:
        yield end_waiting_updates
    finally:
        connection.rollback()
        connection.close()


def test_a_relay_killed_after_the_broker_took_its_batch_is_not_repeated_by_the_next(
    app, client, broker, database_url
):
    """The window between the broker's acknowledgement and the commit that
    marks the rows, made for real: the relay's UPDATE waits on a lock, the
    topic already holds its batch, and the relay is killed (SIGKILL). The
    relay that takes the lease next finds the batch on the topic and marks
    it instead of sending it again."""
    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    create_patients(client, 5, "killed")
    with outbox_updates_blocked(database_url) as end_waiting_updates:
        relay = subprocess.Popen([sys.executable, "-c", RELAY_ROUND, database_url, broker.bootstrap, topic])
        try:
            wait_for(
                lambda: len(event_ids_on(broker.bootstrap, topic)) == 5,
                timeout=30,
                interval=0.2,
                message="the broker to hold the relay's batch",
            )
            assert relay.poll() is None, "the relay marked its batch although the outbox was locked"
        finally:
            relay.kill()
            relay.wait()
            end_waiting_updates()
    with app.app_context():
        successor = OutboxRelay(broker.bootstrap, topic)
        try:
            assert successor.backlog() == 5  # the killed relay marked nothing
            wait_for(
                lambda: successor.publish_pending() == 0 and successor.holds_lease,
                timeout=10,
                message="the killed relay's lease to be free",
            )
            assert successor.backlog() == 0
        finally:
            successor.close()
    assert sorted(event_ids_on(broker.bootstrap, topic)) == outbox_event_ids(app)
