"""Lag from produce to counted, and burst throughput, of the analytics consumer.

Starts a Tansu broker (unless --bootstrap is given) and `python -m analytics.consumer`
on a fresh store (SQLite unless --database-url is given), sends PatientEvents at
--rate per second for --seconds, and reads each event's processed_at (stamped in
the transaction that counts it) against the time it was handed to the producer.
Then sends --burst events at once and times until all are counted.

With --memory N it measures the consumer's memory instead: its RSS after
2×N events at --rate, after --burst events at once (large batches), and
after 2×N more at --rate. Flat after the burst: the burst raised a
high-water mark, nothing leaks.

    .venv/bin/python -m bench.experiments.analytics_lag [--rate 100 --seconds 10 --burst 20000]
    .venv/bin/python -m bench.experiments.analytics_lag --memory 5000 --rate 200 --database-url postgresql://...
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import sqlalchemy as sa
from confluent_kafka import Producer

from analytics.models import ProcessedEvent, Summary
from pms_common.config import normalize_database_url
from pms_common.db import create_engine
from pms_common.events import CREATED, PatientEvent
from pms_common.kafka import producer_config
from pms_common.models import utcnow
from stack.harness import free_port, wait_for
from stack.parts import ROOT, tansu_command


def wait_until(predicate, timeout, what):
    """Polls often: the moment a count is reached is part of the figures."""
    wait_for(predicate, timeout=timeout, interval=0.02, message=what)


def event(registered_date="2024-01-15"):
    patient_id = str(uuid.uuid4())
    return PatientEvent(
        patientId=patient_id,
        name="Bench",
        email=f"{patient_id}@example.com",
        event_type=CREATED,
        event_id=str(uuid.uuid4()),
        occurred_at=utcnow().isoformat().replace("+00:00", "Z"),
        address="1 Main St",
        date_of_birth="1990-01-01",
        registered_date=registered_date,
    )


def percentile(sorted_values, fraction):
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


@contextlib.contextmanager
def consumer_on_fresh_topic(bootstrap=None, database_url=None):
    """A broker (Tansu unless `bootstrap` is given) and `python -m analytics.consumer`
    on fresh topics and a fresh store (SQLite unless `database_url` is given).
    Yields (bootstrap, topic, consumer process, the store's engine)."""
    workdir = Path(tempfile.mkdtemp(prefix="analytics-bench-"))
    database_url = normalize_database_url(database_url or f"sqlite:///{workdir / 'analytics.db'}")
    children = []
    try:
        if not bootstrap:
            port = free_port()
            bootstrap = f"127.0.0.1:{port}"
            children.append(
                subprocess.Popen(tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            wait_until(
                lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() is None,
                20,
                "the broker",
            )
        suffix = uuid.uuid4().hex[:8]
        topic, group = f"patient-bench-{suffix}", f"analytics-bench-{suffix}"
        env = {
            **os.environ,
            "ANALYTICS_DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ANALYTICS_TOPIC": topic,
            "ANALYTICS_DLQ_TOPIC": f"{topic}.dlq",
            "ANALYTICS_GROUP_ID": group,
            "PMS_DATA_DIR": str(workdir),
            "LOG_LEVEL": "WARNING",
        }
        with open(workdir / "consumer.log", "wb") as consumer_log:  # the child keeps its own copy
            consumer = subprocess.Popen(
                [sys.executable, "-m", "analytics.consumer"],
                cwd=ROOT,
                env=env,
                stdout=consumer_log,
                stderr=subprocess.STDOUT,
            )
        children.append(consumer)
        engine = create_engine(database_url)
        yield bootstrap, topic, consumer, engine
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(20)
        engine.dispose()
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.kill()
                child.wait()


def counted(engine):
    """events_processed of the consumer's store."""
    with engine.connect() as connection:
        return connection.scalar(sa.select(Summary.events_processed))


def send(producer, topic, count, rate=None, on_send=None):
    """Produces `count` events, at `rate` per second or all at once; fails
    unless the broker acknowledged every one (a broker that falls behind
    lets events expire in the producer, and the consumer never sees them)."""
    failed = []

    def on_delivery(err, _message):
        if err is not None:
            failed.append(err)

    start = time.monotonic()
    for i in range(count):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        message = event()
        if on_send:
            on_send(message)
        while True:
            try:
                producer.produce(
                    topic, key=message.patientId, value=message.SerializeToString(), on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    unsent = producer.flush(30)
    if failed or unsent:
        raise SystemExit(
            f"the broker did not acknowledge {len(failed) + unsent} of {count} events "
            f"(first error: {failed[0] if failed else 'none, still queued'})"
        )


def memory(bootstrap, database_url, rate, steady, burst):
    """The consumer's RSS after steady events, after a burst (large batches),
    and after as many steady events again: flat afterwards means the burst
    only raised a high-water mark."""
    with consumer_on_fresh_topic(bootstrap, database_url) as (bootstrap, topic, consumer, engine):
        producer = Producer(producer_config(bootstrap))
        wait_until(lambda: counted(engine) == 0, 60, "the consumer's store")
        total, report = 0, []
        for phase, count, phase_rate in (
            ("steady", steady, rate),
            ("steady", steady, rate),
            ("burst", burst, None),
            ("steady", steady, rate),
            ("steady", steady, rate),
        ):
            send(producer, topic, count, phase_rate)
            total += count
            wait_until(lambda total=total: counted(engine) == total, 300, f"{total} events counted")
            rss_mib = psutil.Process(consumer.pid).memory_info().rss / 2**20
            report.append({"phase": phase, "events": total, "consumer_rss_mib": round(rss_mib, 2)})
        return report


def lag(bootstrap, database_url, rate, seconds, burst):
    """Produce → counted lag at a steady rate, then a burst's throughput."""
    with consumer_on_fresh_topic(bootstrap, database_url) as (bootstrap, topic, _consumer, engine):
        producer = Producer(producer_config(bootstrap))
        probe = event()
        producer.produce(topic, key=probe.patientId, value=probe.SerializeToString())
        producer.flush(10)
        wait_until(lambda: counted(engine) == 1, 60, "the consumer to count a first event")

        # Lag phase: a steady stream, each event's send time kept by its id.
        sent_at = {}
        total = int(rate * seconds)
        send(
            producer,
            topic,
            total,
            rate,
            on_send=lambda message: sent_at.__setitem__(message.event_id, time.time()),
        )
        wait_until(lambda: counted(engine) == total + 1, 60, "the stream to be counted")
        with engine.connect() as connection:
            rows = connection.execute(sa.select(ProcessedEvent.event_id, ProcessedEvent.processed_at))
            processed_at = {event_id: value.timestamp() for event_id, value in rows}
        lags_ms = sorted((processed_at[event_id] - sent) * 1000 for event_id, sent in sent_at.items())

        # Throughput phase: a backlog sent at once.
        burst_started = time.monotonic()
        send(producer, topic, burst)
        produced_in = time.monotonic() - burst_started
        wait_until(lambda: counted(engine) == total + 1 + burst, 300, "the burst to be counted")
        burst_seconds = time.monotonic() - burst_started
    return {
        "database": engine.dialect.name,
        "lag_phase": {
            "rate_per_s": rate,
            "events": total,
            "p50_ms": round(percentile(lags_ms, 0.50), 1),
            "p99_ms": round(percentile(lags_ms, 0.99), 1),
            "max_ms": round(lags_ms[-1], 1),
        },
        "burst_phase": {
            "events": burst,
            "produced_in_s": round(produced_in, 2),
            "counted_in_s": round(burst_seconds, 2),
            "events_per_s": round(burst / burst_seconds),
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="events per second in the steady phases")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag phase")
    parser.add_argument("--burst", type=int, default=20000, help="events sent at once")
    parser.add_argument(
        "--memory",
        type=int,
        metavar="N",
        help="instead of lag: the consumer's RSS after 2×N steady events, the burst, 2×N more",
    )
    parser.add_argument("--bootstrap", help="an existing broker (default: start Tansu)")
    parser.add_argument("--database-url", help="an existing empty database (default: a fresh SQLite file)")
    args = parser.parse_args()
    if args.memory:
        result = memory(args.bootstrap, args.database_url, args.rate, args.memory, args.burst)
    else:
        result = lag(args.bootstrap, args.database_url, args.rate, args.seconds, args.burst)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
