"""Lag from produce to counted, and burst throughput, of the analytics consumer.

Starts a Tansu broker (unless --bootstrap is given) and `python -m analytics.consumer`
on a fresh store (SQLite unless --database-url is given), sends PatientEvents at
--rate per second for --seconds, and reads each event's processed_at (stamped in
the transaction that counts it) against the time it was handed to the producer.
Then sends --burst events at once and times until all are counted.

    .venv/bin/python bench/analytics_lag.py [--rate 100 --seconds 10 --burst 20000]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka import Producer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pms_common.config import normalize_database_url  # noqa: E402
from pms_common.events import CREATED, PatientEvent  # noqa: E402
from pms_common.kafka import producer_config  # noqa: E402
from stack.parts import tansu_command  # noqa: E402


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def event(registered_date="2024-01-15"):
    patient_id = str(uuid.uuid4())
    return PatientEvent(patientId=patient_id, name="Bench", email=f"{patient_id}@example.com",
                        event_type=CREATED, event_id=str(uuid.uuid4()),
                        occurred_at=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                        address="1 Main St", date_of_birth="1990-01-01", registered_date=registered_date)


def percentile(sorted_values, fraction):
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="events per second in the lag phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag phase")
    parser.add_argument("--burst", type=int, default=20000, help="events sent at once in the throughput phase")
    parser.add_argument("--bootstrap", help="an existing broker (default: start Tansu)")
    parser.add_argument("--database-url", help="an existing empty database (default: a fresh SQLite file)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="analytics-bench-"))
    database_url = normalize_database_url(args.database_url or f"sqlite:///{workdir / 'analytics.db'}")
    children = []
    try:
        bootstrap = args.bootstrap
        if not bootstrap:
            port = free_port()
            bootstrap = f"127.0.0.1:{port}"
            children.append(subprocess.Popen(tansu_command(port), stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
            wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() is None,
                       20, "the broker")
        suffix = uuid.uuid4().hex[:8]
        topic, group = f"patient-bench-{suffix}", f"analytics-bench-{suffix}"
        env = {**os.environ, "ANALYTICS_DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "ANALYTICS_TOPIC": topic, "ANALYTICS_DLQ_TOPIC": f"{topic}.dlq", "ANALYTICS_GROUP_ID": group,
               "PMS_DATA_DIR": str(workdir), "LOG_LEVEL": "WARNING"}
        consumer_log = open(workdir / "consumer.log", "wb")
        consumer = subprocess.Popen([sys.executable, "-m", "analytics.consumer"], cwd=REPO, env=env,
                                    stdout=consumer_log, stderr=subprocess.STDOUT)
        children.append(consumer)
        engine = sa.create_engine(database_url)

        def counted():
            with engine.connect() as connection:
                return connection.execute(sa.text("SELECT events_processed FROM analytics_summary")).scalar()

        producer = Producer(producer_config(bootstrap))
        probe = event()
        producer.produce(topic, key=probe.patientId, value=probe.SerializeToString())
        producer.flush(10)
        wait_until(lambda: counted() == 1, 60, "the consumer to count a first event")

        # Lag phase: a steady stream, each event's send time kept by its id.
        sent_at = {}
        interval, total = 1.0 / args.rate, int(args.rate * args.seconds)
        start = time.monotonic()
        for i in range(total):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            message = event()
            sent_at[message.event_id] = time.time()
            producer.produce(topic, key=message.patientId, value=message.SerializeToString())
            producer.poll(0)
        producer.flush(10)
        wait_until(lambda: counted() == total + 1, 60, "the stream to be counted")
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT event_id, processed_at FROM analytics_processed_events"))
            processed_at = {event_id: _epoch(value) for event_id, value in rows}
        lags_ms = sorted((processed_at[event_id] - sent) * 1000 for event_id, sent in sent_at.items())

        # Throughput phase: a backlog sent at once.
        burst_started = time.monotonic()
        for _ in range(args.burst):
            message = event()
            while True:
                try:
                    producer.produce(topic, key=message.patientId, value=message.SerializeToString())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        producer.flush(30)
        produced_in = time.monotonic() - burst_started
        wait_until(lambda: counted() == total + 1 + args.burst, 300, "the burst to be counted")
        burst_seconds = time.monotonic() - burst_started

        consumer.send_signal(signal.SIGTERM)
        consumer.wait(20)
        print(json.dumps({
            "database": database_url.split(":", 1)[0],
            "lag_phase": {"rate_per_s": args.rate, "events": total,
                          "p50_ms": round(percentile(lags_ms, 0.50), 1),
                          "p99_ms": round(percentile(lags_ms, 0.99), 1),
                          "max_ms": round(lags_ms[-1], 1)},
            "burst_phase": {"events": args.burst, "produced_in_s": round(produced_in, 2),
                            "counted_in_s": round(burst_seconds, 2),
                            "events_per_s": round(args.burst / burst_seconds)},
        }, indent=2))
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.kill()
                child.wait()


def _epoch(value):
    if isinstance(value, str):  # SQLite keeps the UTC time as text
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


if __name__ == "__main__":
    main()
