"""Two copies of patient (each with its outbox relay), of analytics' consumer
and of billing, behind one Envoy, on one PostgreSQL database and the embedded
broker: 1000 creates, updates and deletes through the gateway while one copy
of each is killed (SIGKILL) in the middle. Every event is published once,
counted once, and every patient has exactly one account."""

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from pms_common.config import ConfigError
from pms_common.events import PATIENT_TOPIC
from pms_common.kafka import consumer_config
from pms_common.status import StatusFile, status_path
from stack.config import StackConfig
from stack.drain import Reader, unread_events
from stack.harness import RunningSystem
from stack.parts import build_parts
from stack.run import supervisord_conf
from tests.e2e.conftest import supervisorctl
from tests.support import fresh_database, postgres_admin_url, wait_for

pytestmark = pytest.mark.e2e

# Each copy of patient and analytics brings its own loop (its relay, its consumer).
COPIES = {"patient": 2, "analytics": 2, "billing": 2}
LOOPS = ("patient-worker", "analytics-consumer")
PATIENTS = 500  # each created; 300 of them updated, 200 deleted: 1000 writes
KILL_AFTER = 400  # writes done when one copy of each part is killed
WRITERS = 8
RETRIES = 8  # a write that met a killed copy (connection refused, 502, 503) is sent again
# What the lease holder's session is called in pg_stat_activity (patient.outbox.PostgresLease).
RELAY_SESSION = "patient outbox relay "
CONSUMER_GROUPS = ("analytics-service", "billing-service")


def patient_body(tag, name=None):
    return {
        "name": name or f"Scale {tag}",
        "email": f"scale-{tag}@example.com",
        "address": "2 Copies Lane",
        "dateOfBirth": "1980-02-02",
        "registeredDate": "2024-03-01",
    }


class Writer:
    """Sends one patient's writes in order, each until the system answers it
    (as a client does when a copy it reached died): a retried create that the
    first try had made is found by its email, a retried delete that the first
    try had done is a 404."""

    def __init__(self, system, api):
        self.system, self.api = system, api
        self.done = 0
        self.lock = threading.Lock()

    def send(self, method, path, **kwargs):
        for attempt in range(RETRIES):
            try:
                response = self.api.request(method, f"{self.system.url}{path}", timeout=20, **kwargs)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code not in (502, 503, 504):
                return response, attempt
            time.sleep(0.25 * (attempt + 1))
        raise AssertionError(f"{method} {path} failed {RETRIES} times")

    def run(self, index):
        tag = f"{index}-{uuid.uuid4().hex[:8]}"
        body = patient_body(tag)
        response, attempt = self.send("POST", "/api/patients", json=body)
        if response.status_code == 409 and attempt:
            found, _ = self.send("GET", "/api/patients", params={"email": body["email"]})
            patient_id = found.json()[0]["id"]
        else:
            assert response.status_code == 201, response.text
            patient_id = response.json()["id"]
        self.count()
        if index % 5 in (0, 1, 2):
            response, _ = self.send(
                "PUT", f"/api/patients/{patient_id}", json={**body, "name": f"Renamed {tag}"}
            )
            assert response.status_code == 200, response.text
            self.count()
        if index % 5 in (2, 4):
            response, attempt = self.send("DELETE", f"/api/patients/{patient_id}")
            assert response.status_code == 204 or (response.status_code == 404 and attempt), response.text
            self.count()

    def count(self):
        with self.lock:
            self.done += 1


def assigned_partitions(system, part, consumer):
    """The partitions the consumer in the part's log was last assigned ([] after a revoke)."""
    partitions = []
    for line in system.log_lines(part):
        try:
            entry = json.loads(line.split("| ", 1)[1])
        except (IndexError, ValueError):
            continue
        if entry.get("service") != consumer:
            continue
        if entry.get("message") == "partitions assigned":
            partitions = entry["partitions"]
        elif entry.get("message") == "partitions revoked":
            partitions = []
    return partitions


def groups_split_the_partitions(system):
    """Both copies of each consumer hold partitions, none the same."""
    for part, consumer in (("analytics", "analytics-consumer"), ("billing", "billing")):
        first = assigned_partitions(system, part, consumer)
        second = assigned_partitions(system, f"{part}-2", consumer)
        if not first or not second or set(first) & set(second):
            return False
    return True


def part_pid(system, name):
    """The pid of a part, or of a loop (`analytics-consumer-2`) its service forked."""
    loop, _, copy = name.rpartition("-") if name[-1].isdigit() else (name, "", "1")
    if loop in LOOPS:
        return system.loop_pid(loop, int(copy))
    return int(supervisorctl(system, "pid", name).strip())


def relay_holder_pid(database):
    """The pid of the patient-worker whose relay holds the outbox lease."""
    row = database.execute(
        "SELECT a.application_name FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE %s",
        (RELAY_SESSION + "%",),
    ).fetchone()
    return row and int(row[0].rsplit(":", 1)[1])


def kill_one_copy_of_each(system, database):
    """SIGKILLs the copy of patient whose relay publishes (its API and its
    relay), one analytics consumer and one billing; returns the parts killed."""
    holder = wait_for(lambda: relay_holder_pid(database), timeout=10, message="a relay holding the lease")
    copy = next(name for name in ("patient-worker", "patient-worker-2") if part_pid(system, name) == holder)
    patient = "patient" if copy == "patient-worker" else "patient-2"
    killed = {name: part_pid(system, name) for name in (copy, patient, "analytics-consumer", "billing")}
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)
    return killed


def event_ids_on_topic(bootstrap):
    """Every event id the topic holds, from its beginning, a repeat as often as it was sent."""
    consumer = Consumer(
        consumer_config(
            bootstrap, f"scale-out-check-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
        )
    )
    try:
        partitions = consumer.list_topics(PATIENT_TOPIC, timeout=5).topics[PATIENT_TOPIC].partitions
        assert len(partitions) > 1, "one patient's events are kept in order by key across several partitions"
        consumer.assign(
            [TopicPartition(PATIENT_TOPIC, partition, OFFSET_BEGINNING) for partition in partitions]
        )
        unread, event_ids = set(partitions), []

        def read_to_the_end():
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                event_ids.extend(value.decode() for key, value in message.headers() if key == "event_id")
            elif message is not None and message.error().code() == KafkaError._PARTITION_EOF:
                unread.discard(message.partition())
            return not unread

        wait_for(read_to_the_end, timeout=30, interval=0, message="the end of every partition")
    finally:
        consumer.close()
    return event_ids


def test_copies_get_their_own_names_ports_and_status_files(tmp_path):
    ports = {"BILLING_PORT": 9001, "BILLING_METRICS_PORT": 9101, "BROKER_PORT": 9092, "GATEWAY_PORT": 4004}
    copies = {
        "billing": [{"BILLING_PORT": 19001, "BILLING_METRICS_PORT": 19101}],
        "patient": [{"PATIENT_PORT": 14000, "PATIENT_WORKER_METRICS_PORT": 19103}],
    }
    parts = {part.name: part for part in build_parts(ports, tmp_path / "envoy.yaml", tmp_path, copies)}
    assert parts["billing"].env == {} and parts["patient"].env == {}
    assert parts["billing-2"].env == {
        "BILLING_PORT": "19001",
        "BILLING_METRICS_PORT": "19101",
        "PMS_COPY": "2",
    }
    assert parts["patient-2"].env == {
        "PATIENT_PORT": "14000",
        "PATIENT_WORKER_METRICS_PORT": "19103",
        "PMS_COPY": "2",
    }
    # The copy's relay runs in that copy's process tree, not under supervisord.
    assert parts["patient-worker-2"].runs_in == "patient-2" and parts["patient-worker"].runs_in == "patient"
    assert "analytics-2" not in parts and "analytics-consumer-2" not in parts
    # The copy's status file is the one its process writes (PMS_COPY=2).
    StatusFile(status_path(tmp_path, "patient-worker", 2)).report("outbox relay", "waits for the broker")
    assert parts["patient-worker-2"].problem() == "waits for the broker"
    assert parts["patient-worker"].problem() == "has not reported yet"
    conf = supervisord_conf(tmp_path, list(parts.values()))
    assert 'environment=BILLING_PORT="19001",BILLING_METRICS_PORT="19101",PMS_COPY="2"' in conf
    assert "[program:patient-2]" in conf and "[program:patient-worker" not in conf


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"PMS_COPIES": "patient=2"}, "several copies of patient need PostgreSQL"),
        ({"PMS_COPIES": "auth=2", "DATABASE_URL": "postgresql://db/pms"}, "'auth' runs as one copy"),
        ({"PMS_COPIES": "patient:2"}, "PMS_COPIES must list part=count pairs"),
        ({"PMS_COPIES": "billing=0", "DATABASE_URL": "postgresql://db/pms"}, "at least 1"),
    ],
)
def test_copies_the_launcher_cannot_run_are_refused(settings, refused):
    with pytest.raises(ConfigError, match=refused):
        StackConfig(settings).check()


def test_copies_on_postgresql_are_accepted_and_sqlite_runs_one():
    config = StackConfig(
        {
            "PMS_COPIES": "patient=2, billing=2",
            "PATIENT_DATABASE_URL": "postgres://db/p",
            "BILLING_DATABASE_URL": "postgresql://db/b",
        }
    )
    config.check()
    assert config.COPIES == {"patient": 2, "billing": 2}
    StackConfig({"PMS_COPIES": "patient=1"}).check()


@pytest.mark.skipif(not postgres_admin_url(), reason="needs PMS_TEST_POSTGRES_URL (CI sets it)")
# Starting some twenty processes takes minutes on a machine busy with other work.
@pytest.mark.timeout(600)
def test_two_copies_of_each_part_publish_count_and_bill_every_change_once_when_one_of_each_is_killed(
    tmp_path,
):
    with fresh_database("postgres", tmp_path, "scaleout") as url:
        url = url.replace("+psycopg", "")
        # One gunicorn worker per web copy: the copies are what this test is about.
        settings = {"DATABASE_URL": url, "WEB_CONCURRENCY": "1", "PMS_READY_TIMEOUT": "300"}
        system = RunningSystem(tmp_path, settings, copies=COPIES).start(timeout=320)
        try:
            with psycopg.connect(url, autocommit=True) as database:
                check_scale_out(system, database)
        finally:
            system.stop()


def check_scale_out(system, database):
    started = time.monotonic()

    def progress(what):  # shown with a failure: how far the test got, and when
        print(f"{time.monotonic() - started:6.1f}s {what}", flush=True)

    progress(f"system up: {[line for line in system.output if ' is ready ' in line][-1:]}")
    bootstrap = f"127.0.0.1:{system.ports['BROKER_PORT']}"
    # Both copies of each part are up, and exactly one relay publishes.
    for name in COPIES:
        assert part_pid(system, name) and part_pid(system, f"{name}-2")
    wait_for(
        lambda: groups_split_the_partitions(system),
        timeout=30,
        interval=0.5,
        message="the copies of each consumer to share the partitions",
    )
    writer = Writer(system, system.session())
    killed = {}

    def kill_in_the_middle():
        wait_for(lambda: writer.done >= KILL_AFTER, timeout=180, interval=0.05, message="the first writes")
        killed.update(kill_one_copy_of_each(system, database))

    killer = threading.Thread(target=kill_in_the_middle)
    killer.start()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(writer.run, range(PATIENTS)))
    killer.join()
    progress(f"writes done; killed {killed}")
    assert writer.done == 1000 and len(killed) == 4
    # Each killed copy was started again, and another relay took the lease.
    for name, pid in killed.items():
        wait_for(
            lambda name=name, pid=pid: part_pid(system, name) not in (0, pid),
            timeout=60,
            message=f"{name} restarted",
        )
    progress("killed copies restarted")

    # Every event was published, once.
    wait_for(
        lambda: (
            database.execute("SELECT count(*) FROM outbox_events WHERE published_at IS NULL").fetchone()[0]
            == 0
        ),
        timeout=60,
        interval=0.5,
        message="the outbox to be published",
    )
    progress("outbox published")
    assert relay_holder_pid(database) not in (None, *killed.values()), "the other copy's relay took over"
    outbox = dict(database.execute("SELECT event_id::text, event_type FROM outbox_events").fetchall())
    on_topic = Counter(event_ids_on_topic(bootstrap))
    assert set(on_topic) == set(outbox)
    assert [event_id for event_id, times in on_topic.items() if times > 1] == []

    # Both groups read to the end of every partition; analytics counted each event once.
    probe = Consumer(
        consumer_config(bootstrap, "scale-out-probe", **{"enable.partition.eof": True, "log_level": 0})
    )
    try:
        wait_for(
            lambda: (
                not any(
                    unread_events(
                        bootstrap, [Reader(group, PATIENT_TOPIC) for group in CONSUMER_GROUPS], probe
                    ).values()
                )
            ),
            timeout=90,
            interval=0.5,
            message="both consumer groups to read every event",
        )
    finally:
        probe.close()
    progress("both groups read everything")
    by_type = Counter(outbox.values())
    patients = database.execute("SELECT count(*) FROM patients").fetchone()[0]
    summary = database.execute(
        "SELECT patients_created, patients_updated, patients_deleted, active_patients, events_processed "
        "FROM analytics_summary"
    ).fetchone()
    assert summary == (
        by_type["PATIENT_CREATED"],
        by_type["PATIENT_UPDATED"],
        by_type["PATIENT_DELETED"],
        patients,
        len(outbox),
    )
    assert database.execute("SELECT count(*) FROM analytics_processed_events").fetchone()[0] == len(outbox)

    # Every patient has exactly one account, ACTIVE; every deleted one's is CLOSED.
    def accounts_settled():
        unsettled = database.execute(
            "SELECT count(*) FROM patients p WHERE (SELECT count(*) FROM billing_accounts b "
            "WHERE b.patient_id = p.id AND b.status = 'ACTIVE') <> 1 OR EXISTS (SELECT 1 FROM "
            "billing_accounts b WHERE b.patient_id = p.id AND b.status <> 'ACTIVE')"
        ).fetchone()[0]
        still_open = database.execute(
            "SELECT count(*) FROM outbox_events o JOIN billing_accounts b ON b.patient_id = o.patient_id "
            "WHERE o.event_type = 'PATIENT_DELETED' AND b.status <> 'CLOSED'"
        ).fetchone()[0]
        return unsettled == 0 and still_open == 0

    progress("analytics counted each event once")
    wait_for(accounts_settled, timeout=90, interval=1, message="every account opened or closed")
    deleted = database.execute(
        "SELECT count(DISTINCT patient_id) FROM outbox_events WHERE event_type = 'PATIENT_DELETED'"
    ).fetchone()[0]
    assert deleted == 200 and patients == PATIENTS - 200 + seeded_patients(database)


def seeded_patients(database):
    return database.execute("SELECT count(*) FROM patients WHERE email NOT LIKE 'scale-%'").fetchone()[0]
