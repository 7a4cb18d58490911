"""`python -m analytics.consumer`: counts patient events exactly once.

Each poll takes what its fetch brought and what arrives within BATCH_WAIT_MS
(up to BATCH_SIZE messages) and counts it in one database transaction that
also records every event id; only after that commit are the offsets stored
and committed. A crash anywhere before the commit redelivers the batch, and
the recorded ids make the redelivery change nothing. Messages that can never
be counted go to the dead-letter topic first.
"""
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from pms_common.config import ConfigError
from pms_common.heap import freeze_start_up_objects
from pms_common.kafka import consumer_config, ensure_topics, producer_config
from pms_common.logs import configure_logging
from pms_common.serve import migrate_and_seed

from . import MIGRATIONS_DIR, create_app, store
from .config import Config
from .events import InvalidEvent, decode
from .extensions import db

log = logging.getLogger("analytics.consumer")
kafka_log = logging.getLogger("kafka")

POLL_TIMEOUT = 0.1        # seconds a poll waits when nothing is queued
COMMIT_INTERVAL = 0.5     # seconds between offset commits (stored offsets batch up)
DLQ_FLUSH_TIMEOUT = 5.0  # seconds to wait for the dead-letter topic to take a batch
RETRY_DELAYS = (0.5, 1, 2, 5)  # back-off after a failed batch, then 5 s each time
FORGET_INTERVAL = 600.0   # seconds between sweeps of event ids older than DEDUP_HOURS


class DeadLetterError(RuntimeError):
    """The dead-letter topic did not take a message: its offset must not be committed."""


class PatientEventConsumer:
    def __init__(self, config, engine, stop_event=None):
        self.config = config
        self.engine = engine
        self.stop_event = stop_event or threading.Event()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.consumer = None
        self.producer = None
        self._next_heartbeat = 0.0
        self._next_commit = 0.0
        self._next_forget = 0.0
        self._offsets_stored = False
        self._failures = 0
        self._client_error = None  # reported during a poll; the next heartbeat records it

    def run(self):
        """Consumes until stop_event is set; closes the clients on the way out."""
        if not self._wait_for_topics():
            return
        self.producer = self._make_producer()
        self.consumer = Consumer(consumer_config(
            self.config.KAFKA_BOOTSTRAP_SERVERS, self.config.CONSUMER_GROUP, logger=kafka_log,
            error_cb=self._on_client_error, on_commit=self._on_commit,
            **{"fetch.wait.max.ms": self.config.FETCH_WAIT_MS, "client.id": f"analytics-{self.identity}"}))
        try:
            self.consumer.subscribe([self.config.PATIENT_TOPIC], on_assign=self._on_assign,
                                    on_revoke=self._on_revoke)
            log.info("consuming", extra={"topic": self.config.PATIENT_TOPIC,
                                         "group": self.config.CONSUMER_GROUP})
            while not self.stop_event.is_set():
                self._heartbeat_if_due()
                messages = self._poll()
                if messages:
                    self._handle(messages)
                self._commit_if_due()
                self._forget_if_due()
        finally:
            self._close()

    def _make_producer(self):
        """The dead-letter topic's producer."""
        return Producer(producer_config(self.config.KAFKA_BOOTSTRAP_SERVERS, logger=kafka_log))

    def _wait_for_topics(self):
        """Creates the topics, retrying while the broker is down; False if stopped first."""
        topics = [self.config.PATIENT_TOPIC, self.config.DEAD_LETTER_TOPIC]
        for attempt in itertools.count():
            if self.stop_event.is_set():
                return False
            try:
                ensure_topics(self.config.KAFKA_BOOTSTRAP_SERVERS, topics,
                              partitions=self.config.TOPIC_PARTITIONS, timeout=3.0)
                return True
            except Exception as exc:  # the broker is not up yet: keep trying
                log.warning("cannot reach the broker to create topics, retrying: %s", exc,
                            extra={"attempt": attempt + 1})
                self.stop_event.wait(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])

    def _poll(self):
        """Waits for one message, then takes the rest of what was fetched and
        what arrives within BATCH_WAIT_MS."""
        first = self.consumer.poll(POLL_TIMEOUT)
        if first is None:
            return []
        batch = [first]
        if self.config.BATCH_SIZE > 1:
            batch += self.consumer.consume(num_messages=self.config.BATCH_SIZE - 1,
                                           timeout=self.config.BATCH_WAIT_MS / 1000)
        messages = []
        for message in batch:
            error = message.error()
            if error is None:
                messages.append(message)
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
                self._write_heartbeat(error=error)
        return messages

    def _handle(self, messages):
        events, dead = [], []
        for message in messages:
            try:
                events.append(decode(message.value()))
            except InvalidEvent as exc:
                dead.append((message, str(exc)))
        try:
            if dead:
                self._dead_letter(dead)
            if events:
                with self.engine.begin() as connection:
                    counted = store.apply_events(connection, events)
                log.debug("batch counted", extra={"messages": len(messages), "counted": counted})
        except Exception as exc:  # database or dead-letter topic down: nothing is committed
            self._retry_later(messages, exc)
            return
        self._failures = 0
        self._store_offsets(messages)

    def _dead_letter(self, dead):
        failures = []

        def delivered(err, _message):
            if err is not None:
                failures.append(err)

        for message, reason in dead:
            headers = list(message.headers() or []) + [
                ("dlq-reason", reason.encode()),
                ("dlq-source-topic", message.topic().encode()),
                ("dlq-source-partition", str(message.partition()).encode()),
                ("dlq-source-offset", str(message.offset()).encode()),
            ]
            self.producer.produce(self.config.DEAD_LETTER_TOPIC, value=message.value(), key=message.key(),
                                  headers=headers, on_delivery=delivered)
        undelivered = self.producer.flush(DLQ_FLUSH_TIMEOUT)
        if undelivered or failures:
            raise DeadLetterError(f"dead-letter topic took {len(dead) - undelivered - len(failures)} of "
                                  f"{len(dead)} messages: {failures[:1] or 'timed out'}")
        for message, reason in dead:
            log.warning("dead-lettered a message: %s", reason,
                        extra={"partition": message.partition(), "offset": message.offset()})

    def _retry_later(self, messages, exc):
        """Rewinds to the batch's first offsets so it is read again after a pause."""
        delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)]
        self._failures += 1
        log.error("batch not counted, retrying in %ss: %s", delay, exc,
                  extra={"messages": len(messages), "failures": self._failures})
        self._write_heartbeat(error=exc)
        for partition in self._first_offsets(messages):
            self.consumer.seek(partition)
        self.stop_event.wait(delay)

    def _store_offsets(self, messages):
        self.consumer.store_offsets(offsets=[
            TopicPartition(topic, partition, offset + 1)
            for (topic, partition), offset in self._last_offsets(messages).items()])
        self._offsets_stored = True

    def _commit_if_due(self, force=False):
        if not self._offsets_stored or (not force and time.monotonic() < self._next_commit):
            return
        try:
            self.consumer.commit(asynchronous=not force)
            self._offsets_stored = False
        except KafkaException as exc:  # a later commit covers these offsets
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed: %s", exc)
        self._next_commit = time.monotonic() + COMMIT_INTERVAL

    def _forget_if_due(self):
        """Deletes a chunk of event ids older than DEDUP_HOURS; a full chunk
        means more are due, so the next one follows after the next batch."""
        if time.monotonic() < self._next_forget:
            return
        before = store.utc_now() - timedelta(hours=self.config.DEDUP_HOURS)
        forgotten = 0
        try:
            with self.engine.begin() as connection:
                forgotten = store.forget_processed_events(connection, before)
        except Exception as exc:  # the database is down: the next sweep tries again
            log.warning("cannot forget old event ids: %s", exc)
        if forgotten:
            log.info("forgot the ids of old events", extra={"forgotten": forgotten})
        self._next_forget = time.monotonic() + (0.0 if forgotten >= store.FORGET_CHUNK else FORGET_INTERVAL)

    def _heartbeat_if_due(self):
        if time.monotonic() >= self._next_heartbeat:
            error, self._client_error = self._client_error, None
            self._write_heartbeat(error=error)

    def _write_heartbeat(self, error=None):
        self._next_heartbeat = time.monotonic() + self.config.HEARTBEAT_SECONDS
        try:
            with self.engine.begin() as connection:
                store.write_heartbeat(connection, self.config.CONSUMER_GROUP, self.identity, error=error)
        except Exception as exc:  # the database is down: readiness goes red by itself
            log.warning("cannot write heartbeat: %s", exc)

    def _on_client_error(self, error):
        # Broker down, connection refused...: librdkafka keeps retrying by itself.
        log.warning("kafka client error: %s", error)
        self._client_error = error

    @staticmethod
    def _on_commit(error, _partitions):
        if error is not None:  # the next commit carries these offsets again
            log.warning("offset commit failed: %s", error)

    def _on_assign(self, _consumer, partitions):
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})

    def _on_revoke(self, _consumer, partitions):
        # Hand over with offsets committed, so the next owner redelivers little.
        self._commit_if_due(force=True)
        log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})

    def _close(self):
        if self.consumer is not None:
            try:
                self._commit_if_due(force=True)
            finally:
                self.consumer.close()
        if self.producer is not None:
            self.producer.flush(DLQ_FLUSH_TIMEOUT)
        log.info("consumer closed")

    @staticmethod
    def _last_offsets(messages):
        offsets = {}
        for message in messages:
            key = (message.topic(), message.partition())
            offsets[key] = max(offsets.get(key, -1), message.offset())
        return offsets

    @staticmethod
    def _first_offsets(messages):
        firsts = {}
        for message in messages:
            key = (message.topic(), message.partition())
            firsts[key] = min(firsts.get(key, message.offset()), message.offset())
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in firsts.items()]


def main():
    try:
        config = Config()
    except ConfigError as exc:
        sys.exit(f"analytics consumer: {exc}")
    configure_logging("analytics-consumer", config.LOG_LEVEL)
    config.ensure_data_dir()
    app = create_app(config)
    migrate_and_seed(app, MIGRATIONS_DIR)
    freeze_start_up_objects()
    stop_event = threading.Event()

    def request_stop(signum, _frame):
        log.info("signal %s: stopping after the current batch", signum)
        stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with app.app_context():
        PatientEventConsumer(config, db.engine, stop_event).run()


if __name__ == "__main__":
    main()
