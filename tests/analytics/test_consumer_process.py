"""`python -m analytics.consumer` as a real process, killed while events flow.

A killed member holds its partitions until the broker notices (~10 s), so the
SQLite and PostgreSQL runs go side by side in one test to halve the wait."""

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Producer

from analytics.extensions import db
from analytics.models import PatientState, ProcessedEvent
from pms_common.events import CREATED
from pms_common.kafka import producer_config
from tests.support import fresh_database, postgres_admin_url, wait_for

from .conftest import make_config
from .helpers import committed_total, patient_event, produce, summary

REPO = Path(__file__).resolve().parents[2]
TOTAL, CHUNK, CHUNK_INTERVAL = 3000, 100, 0.1  # ~1 000 events/s for 3 s
KILL_AFTER = 600


@pytest.fixture
def every_database_url(tmp_path):
    """SQLite, and PostgreSQL when PMS_TEST_POSTGRES_URL is set."""
    with ExitStack() as stack:
        urls = [f"sqlite:///{tmp_path / 'analytics.db'}"]
        if postgres_admin_url():
            urls.append(stack.enter_context(fresh_database("postgres", tmp_path, "analytics_kill")))
        yield urls


class KilledConsumerRun:
    """One database's consumer process, its event stream and its figures."""

    def __init__(self, app_factory, database_url, broker, tmp_path):
        self.kind = "sqlite" if database_url.startswith("sqlite") else "postgres"
        self.broker = broker
        self.config = make_config(database_url, broker.bootstrap)
        self.app = app_factory(self.config)
        self.client = self.app.test_client()
        self.log_dir = tmp_path
        self.events = [
            patient_event(CREATED, registered_date=f"2024-{i % 12 + 1:02d}-01") for i in range(TOTAL)
        ]
        self.processes = []
        self.stream = threading.Thread(target=self._produce_steadily, daemon=True)

    def counted(self):
        return summary(self.client)["eventsProcessed"]

    def start_consumer(self):
        config = self.config
        env = {
            **os.environ,
            "ANALYTICS_DATABASE_URL": config.DATABASE_URL,
            "KAFKA_BOOTSTRAP_SERVERS": config.KAFKA_BOOTSTRAP_SERVERS,
            "ANALYTICS_TOPIC": config.PATIENT_TOPIC,
            "ANALYTICS_DLQ_TOPIC": config.DEAD_LETTER_TOPIC,
            "ANALYTICS_GROUP_ID": config.CONSUMER_GROUP,
            "ANALYTICS_BATCH_SIZE": "50",
            "PMS_DATA_DIR": str(self.log_dir),
            "LOG_LEVEL": "INFO",
        }
        with open(self.log_dir / f"consumer-{self.kind}-{len(self.processes) + 1}.log", "wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "analytics.consumer"],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return self.processes[-1]

    def produce_probe(self):
        """The first event: counted once the consumer has its partitions."""
        produce(self.broker.bootstrap, self.config.PATIENT_TOPIC, self.events[:1])

    def _produce_steadily(self):
        producer = Producer(producer_config(self.broker.bootstrap))
        for start in range(1, TOTAL, CHUNK):
            produce(
                self.broker.bootstrap,
                self.config.PATIENT_TOPIC,
                self.events[start : start + CHUNK],
                producer=producer,
            )
            time.sleep(CHUNK_INTERVAL)

    def kill_consumer(self):
        process = self.processes[-1]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        counted = self.counted()
        committed = committed_total(
            self.broker.bootstrap, self.config.CONSUMER_GROUP, self.config.PATIENT_TOPIC
        )
        print(f"{self.kind}: killed with {counted} counted and {committed} committed")
        assert counted < TOTAL, "the kill came after the stream ended"
        # Offsets only ever follow the counts: nothing committed is uncounted.
        assert committed <= counted

    def stop_consumer(self):
        process = self.processes[-1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, f"{self.kind}: the consumer did not stop cleanly on SIGTERM"

    def kill_leftovers(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def assert_every_event_counted_once(self):
        result = summary(self.client)
        assert (result["patientsCreated"], result["activePatients"], result["eventsProcessed"]) == (
            TOTAL,
        ) * 3
        assert sum(row["count"] for row in self.client.get("/analytics/registrations").get_json()) == TOTAL
        with self.app.app_context(), db.engine.connect() as connection:
            for table in (ProcessedEvent, PatientState):
                assert connection.execute(sa.select(sa.func.count()).select_from(table)).scalar() == TOTAL
        assert (
            committed_total(self.broker.bootstrap, self.config.CONSUMER_GROUP, self.config.PATIENT_TOPIC)
            == TOTAL
        )


def test_a_consumer_killed_mid_stream_and_restarted_counts_every_event_once(
    every_database_url, app_factory, broker, tmp_path
):
    runs = [KilledConsumerRun(app_factory, url, broker, tmp_path) for url in every_database_url]
    try:
        for run in runs:
            run.start_consumer()
            run.produce_probe()
        for run in runs:
            wait_for(
                lambda run=run: run.processes[-1].poll() is None and run.counted() == 1,
                30,
                message=f"{run.kind} consumer up",
            )
        for run in runs:
            run.stream.start()
        for run in runs:
            wait_for(
                lambda run=run: run.counted() >= KILL_AFTER, 30, message=f"{run.kind}: {KILL_AFTER} counted"
            )
            run.kill_consumer()
            run.start_consumer()
        for run in runs:
            run.stream.join(30)
            wait_for(
                lambda run=run: run.counted() == TOTAL,
                45,
                interval=0.2,
                message=f"{run.kind}: {TOTAL} counted after the restart",
            )
            run.stop_consumer()
    finally:
        for run in runs:
            run.kill_leftovers()
    for run in runs:
        run.assert_every_event_counted_once()
