"""The loop of every part that reads patient events.

A part supplies, in its own `consumer.py`, a subclass of `EventConsumer` that
implements `handle_batch(events)`: apply the decoded events and commit them in
the part's own database transaction (it returns only once they are
committed). It builds it with its `ConsumerSettings` and a stop event, then
calls `run()` (the process's main loop) or `start()`/`stop()` (a thread beside
a server). It may also override `report_status(ready, problem)` (a heartbeat,
called every `heartbeat_seconds` while the loop does its work and once at each
change between working and waiting) and `maintain()` (housekeeping, called
between polls). Everything else is written here once:

- poll: the first message, then what its fetch brought and what arrives
  within `batch_wait_ms`, up to `batch_size` messages (bench/README.md, P3);
- decode (pms_common.events.decode): a message that is not a valid
  PatientEvent goes to the dead-letter topic with the reason, its source and
  its own headers, and counts as done only once that topic has it — the same
  for every part, so no message is dropped unseen;
- offsets are stored only after `handle_batch` returned, and committed every
  COMMIT_INTERVAL_SECONDS, at hand-over and at close. A batch that fails is
  read again from its first offsets after a backoff: delivery is at least
  once, so `handle_batch` must change nothing for an event id it has seen;
- never give up: while the database, the broker or the dead-letter topic is
  away the loop waits with capped backoff (pms_common.worker.Outage), logs
  once when it starts waiting and once when it resumes, reports not-ready
  (`ready` is False and the heartbeat stops), and goes on when the peer is
  back. A client that librdkafka declares failed for good is replaced;
- quiet: a loop whose held fetch is shorter than QUIET_FETCH_SECONDS (analytics',
  for its lag) and that has had no message for QUIET_AFTER_SECONDS pauses its
  partitions between fetches and resumes them for one fetch every
  QUIET_FETCH_SECONDS (QuietFetching): the broker answers one fetch every 2 s
  instead of five a second, and the first event after a quiet spell waits up
  to those 2 s (bench/README.md, P7);
- stop: the stop event ends the loop after the batch in hand; offsets are
  committed and the clients closed;
- figures (pms_common.metrics): pms_consumer_lag_events (what the topic holds
  beyond the loop's position) and pms_consumer_lag_seconds (while it lags, the
  age of the last event handled), by group and topic, after each batch and
  every LAG_INTERVAL_SECONDS; a message's `traceparent` header is continued by
  a span around its handling (pms_common.telemetry).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from . import metrics
from .events import DEAD_LETTER_TOPIC, PATIENT_TOPIC, Event, InvalidEvent, decode
from .kafka import KafkaSettings, consumer_config, ensure_topics, producer_config
from .status import HEARTBEAT_SECONDS
from .telemetry import consumer_spans
from .worker import BROKER, Outage, PeerUnavailable, run_until_stopped

log = logging.getLogger(__name__)
kafka_log = logging.getLogger("kafka")

# How long a poll waits when nothing is queued: a message ends it at once, so
# this only sets how often an idle loop wakes and how soon it sees a stop.
POLL_TIMEOUT_SECONDS = 0.5
COMMIT_INTERVAL_SECONDS = 0.5  # stored offsets are committed together, this often
DEAD_LETTER_FLUSH_SECONDS = 5.0  # how long the dead-letter topic gets to take a batch's bad messages
BROKER_PROBE_SECONDS = 2.0  # how long a check that the broker answers may take
TOPIC_CREATION_SECONDS = 3.0
# librdkafka's own log level: critical only. Its errors reach error_cb, and
# the loop says once that it waits for the broker instead of a line per reconnect.
LIBRDKAFKA_LOG_LEVEL = 2
# A consumer that does not create its topic notices it within seconds, not minutes.
METADATA_REFRESH_MS = 5000
DEAD_LETTER = "dead-letter topic"
LAG_INTERVAL_SECONDS = 1.0  # how often an idle loop updates its lag figures
# After this long without a message a loop is quiet: it then fetches once every
# QUIET_FETCH_SECONDS (when its held fetch is shorter than that).
QUIET_AFTER_SECONDS = 10.0
QUIET_FETCH_SECONDS = 2.0
DEFAULT_FETCH_WAIT_MS = 500  # librdkafka's fetch.wait.max.ms
WAKE_TIMEOUT_SECONDS = 1.0  # how long a look's metadata request may take


class DeadLetterError(PeerUnavailable):
    """The dead-letter topic did not take a message: its offset must not be committed."""

    def __init__(self, message: str) -> None:
        super().__init__(DEAD_LETTER, message)


@dataclass(frozen=True)
class ConsumerSettings:
    """Where a part reads events from, and the shape of its batches."""

    bootstrap_servers: str
    group_id: str
    topic: str = PATIENT_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    client_id: str | None = None
    batch_size: int = 500  # the most messages one handle_batch gets
    batch_wait_ms: int = 0  # after a batch's first message, how long to gather more
    fetch_wait_ms: int | None = None  # how long the broker may hold a fetch; librdkafka's own if None
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    create_topics: bool = False  # the part creates its topics (and may: on MSK that is a permission)
    topic_partitions: int = 3
    kafka: KafkaSettings | None = None
    quiet_after_seconds: float = QUIET_AFTER_SECONDS
    quiet_fetch_seconds: float = QUIET_FETCH_SECONDS

    @classmethod
    def of_part(cls, config: Any, client_id: str) -> ConsumerSettings:
        """A reading part's settings from its Config, which names them as
        analytics' and audit's do (KAFKA_BOOTSTRAP_SERVERS, CONSUMER_GROUP,
        PATIENT_TOPIC, DEAD_LETTER_TOPIC, BATCH_SIZE, BATCH_WAIT_MS,
        FETCH_WAIT_MS, HEARTBEAT_SECONDS, TOPIC_PARTITIONS); it creates its topics."""
        return cls(
            bootstrap_servers=config.KAFKA_BOOTSTRAP_SERVERS,
            group_id=config.CONSUMER_GROUP,
            topic=config.PATIENT_TOPIC,
            dead_letter_topic=config.DEAD_LETTER_TOPIC,
            client_id=client_id,
            batch_size=config.BATCH_SIZE,
            batch_wait_ms=config.BATCH_WAIT_MS,
            fetch_wait_ms=config.FETCH_WAIT_MS,
            heartbeat_seconds=config.HEARTBEAT_SECONDS,
            create_topics=True,
            topic_partitions=config.TOPIC_PARTITIONS,
        )

    def client_config(self, **callbacks: Any) -> dict[str, Any]:
        """The consumer's librdkafka settings."""
        extra: dict[str, Any] = {"logger": kafka_log, "log_level": LIBRDKAFKA_LOG_LEVEL, **callbacks}
        if self.client_id:
            extra["client.id"] = self.client_id
        if self.fetch_wait_ms is not None:
            extra["fetch.wait.max.ms"] = self.fetch_wait_ms
        if not self.create_topics:
            extra["topic.metadata.refresh.interval.ms"] = METADATA_REFRESH_MS
        return consumer_config(self.bootstrap_servers, self.group_id, settings=self.kafka, **extra)


def position(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a message the broker delivered (never unset)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a message without a position is not one the broker delivered")
    return topic, partition, offset


def last_offsets(messages: list[Message]) -> list[TopicPartition]:
    """Per partition, the offset after the batch's last message there (what to commit)."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        topic, partition, offset = position(message)
        offsets[topic, partition] = max(offsets.get((topic, partition), -1), offset)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in offsets.items()]


def first_offsets(messages: list[Message]) -> list[TopicPartition]:
    """Per partition, the batch's first offset there (where to read it again)."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        topic, partition, offset = position(message)
        offsets[topic, partition] = min(offsets.get((topic, partition), offset), offset)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]


class QuietFetching:
    """When a loop's partitions are fetched: always while messages come, and
    after `quiet_after` seconds without one, for one held fetch (a look of
    `look` seconds) every `every` seconds, paused in between. A message, or a
    new assignment, ends the quiet. Used by the loop's own thread only.

    librdkafka takes a resume up at its broker thread's next wake-up, which
    without other work comes once a second; a look therefore also asks for the
    topic's metadata, whose request wakes that thread: the fetch goes out at once."""

    def __init__(self, topic: str, quiet_after: float, every: float, look: float) -> None:
        self.topic = topic
        self.quiet_after, self.every, self.look = quiet_after, every, look
        self.paused = False
        self._assignment_changed = False
        self._next_change = time.monotonic() + quiet_after

    @classmethod
    def of(cls, settings: ConsumerSettings) -> QuietFetching | None:
        """For a loop whose held fetch is shorter than a quiet loop's pace; else None."""
        fetch_wait = (settings.fetch_wait_ms or DEFAULT_FETCH_WAIT_MS) / 1000
        if fetch_wait >= settings.quiet_fetch_seconds:
            return None
        # A look ends halfway through its held fetch: a message already there comes
        # back at once, and librdkafka sends no second fetch, as it would after an
        # empty answer (the paused partition's answer, if any, is read again later).
        look = fetch_wait / 2
        return cls(settings.topic, settings.quiet_after_seconds, settings.quiet_fetch_seconds, look)

    def poll_timeout(self, longest: float) -> float:
        """How long the next poll may wait, so that a look starts and ends on time."""
        return max(0.0, min(longest, self._next_change - time.monotonic()))

    def messages_came(self, consumer: Consumer) -> None:
        if self.paused:
            self._resume(consumer)
        self._next_change = time.monotonic() + self.quiet_after

    def assigned(self) -> None:
        """A new assignment is fetched from the next step on, whatever the loop's
        quiet (not from the rebalance callback: the assignment is not in place yet)."""
        self._assignment_changed = True

    def step(self, consumer: Consumer) -> None:
        """Between polls: a look begins when due; quiet begins, or a look ends, with a pause."""
        now = time.monotonic()
        if self._assignment_changed:
            self._assignment_changed = False
            self._resume(consumer)
            self._next_change = now + self.quiet_after
        elif now < self._next_change:
            return
        elif self.paused:
            self._resume(consumer)
            try:
                consumer.list_topics(self.topic, timeout=WAKE_TIMEOUT_SECONDS)
            except KafkaException:  # the broker is away: fetched as usual until it answers again
                self._next_change = now + self.quiet_after
            else:
                self._next_change = now + self.look
        else:
            assignment = consumer.assignment()
            if assignment:
                consumer.pause(assignment)
            self.paused = True
            self._next_change = now + max(0.0, self.every - self.look)

    def _resume(self, consumer: Consumer) -> None:
        assignment = consumer.assignment()
        if assignment:
            consumer.resume(assignment)
        self.paused = False


class EventConsumer:
    """The consumer loop; a part's subclass implements handle_batch."""

    def __init__(self, settings: ConsumerSettings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop_event = stop or threading.Event()
        self.outage = Outage(
            f"consuming {settings.topic} as {settings.group_id}", on_change=self._state_changed
        )
        self._report_outage = Outage(f"status report of {settings.group_id}")
        self._maintenance_outage = Outage(f"maintenance of {settings.group_id}")
        self.producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._next_report = 0.0
        self._next_commit = 0.0
        self._offsets_stored = False
        self._check_broker = False  # a client error was reported: does the broker still answer?
        self._client_error: KafkaError | None = None  # reported since the last heartbeat
        self._fatal: KafkaError | None = None
        self._reported_codes: set[int] = set()  # message errors said once since the last batch
        self._next_lag = 0.0
        self._last_handled_timestamp: float | None = None  # seconds since the epoch
        self._quiet: QuietFetching | None = None

    # What a part supplies.

    def handle_batch(self, events: list[Event]) -> None:
        """Applies the events and commits them in the part's database; raises if not committed."""
        raise NotImplementedError

    def report_status(self, ready: bool, problem: str | None) -> None:
        """The heartbeat: every heartbeat_seconds while working (problem: a client
        error seen since the last one), and at each change (not ready: what the loop waits for)."""

    def maintain(self) -> None:
        """Housekeeping between polls (the part decides when it is due)."""

    def make_dead_letter_producer(self) -> Producer:
        return Producer(
            producer_config(
                self.settings.bootstrap_servers,
                settings=self.settings.kafka,
                logger=kafka_log,
                log_level=LIBRDKAFKA_LOG_LEVEL,
            )
        )

    # Running.

    @property
    def ready(self) -> bool:
        """False while the loop waits for its database, broker or dead-letter topic."""
        return not self.outage.waiting

    def start(self) -> EventConsumer:
        """Runs the loop on a thread of its own."""
        self._thread = threading.Thread(target=self.run, name="patient-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Consumes until the stop event is set; closes the clients on the way out."""
        try:
            if self.settings.create_topics:
                run_until_stopped(self.outage.activity, self._create_topics, self.stop_event, self.outage)
            while not self.stop_event.is_set():
                try:
                    self._consume()
                except KafkaException as error:  # the client failed for good: a new one takes over
                    self.stop_event.wait(self.outage.failed(error))
                    self._check_broker = True  # the new client's first step says whether it is back
        finally:
            if self.producer is not None:
                self.producer.flush(DEAD_LETTER_FLUSH_SECONDS)
            log.info("patient event consumer stopped", extra={"group": self.settings.group_id})

    def _create_topics(self) -> None:
        ensure_topics(
            self.settings.bootstrap_servers,
            [self.settings.topic, self.settings.dead_letter_topic],
            partitions=self.settings.topic_partitions,
            timeout=TOPIC_CREATION_SECONDS,
            settings=self.settings.kafka,
        )

    def _consume(self) -> None:
        """One client's life: subscribe, then poll and handle until stopped."""
        self._fatal = None
        consumer = Consumer(
            self.settings.client_config(error_cb=self._on_client_error, on_commit=self._on_commit)
        )
        try:
            self._quiet = QuietFetching.of(self.settings)
            consumer.subscribe([self.settings.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            log.info("consuming", extra={"topic": self.settings.topic, "group": self.settings.group_id})
            while not self.stop_event.is_set():
                if self._fatal is not None:
                    raise KafkaException(self._fatal)
                if self._check_broker and not self._broker_answers(consumer):
                    continue
                self._report_if_due()
                messages = self._poll(consumer)
                if self._quiet is not None:
                    if messages:
                        self._quiet.messages_came(consumer)
                    self._quiet.step(consumer)
                if messages:
                    self._handle(consumer, messages)
                self._update_lag(consumer, force=bool(messages))
                self._commit_if_due(consumer)
                self._maintain()
        finally:
            try:
                self._commit_if_due(consumer, force=True)
            finally:
                consumer.close()

    def _broker_answers(self, consumer: Consumer) -> bool:
        """After a client error: whether the broker still answers (a dropped idle
        connection is no outage); while it does not, the loop waits."""
        try:
            consumer.list_topics(self.settings.topic, timeout=BROKER_PROBE_SECONDS)
        except KafkaException as error:
            self.stop_event.wait(self.outage.failed(error))
            return False
        self._check_broker = False
        if self.outage.peer == BROKER:
            self.outage.recovered()
        return True

    def _poll(self, consumer: Consumer) -> list[Message]:
        """Waits for one message, then takes the rest of what was fetched and
        what arrives within batch_wait_ms."""
        timeout = POLL_TIMEOUT_SECONDS
        if self._quiet is not None:
            timeout = self._quiet.poll_timeout(timeout)
        first = consumer.poll(timeout)
        if first is None:
            return []
        batch = [first]
        if self.settings.batch_size > 1:
            batch += consumer.consume(
                num_messages=self.settings.batch_size - 1, timeout=self.settings.batch_wait_ms / 1000
            )
        messages = []
        for message in batch:
            error = message.error()
            if error is None:
                messages.append(message)
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._message_error(error)
        return messages

    def _handle(self, consumer: Consumer, messages: list[Message]) -> None:
        events, dead = [], []
        for message in messages:
            try:
                events.append(decode(message.value()))
            except InvalidEvent as invalid:
                dead.append((message, str(invalid)))
        try:
            if dead:
                self._dead_letter(dead)
            if events:
                with consumer_spans(self.settings.topic, self.settings.group_id, messages):
                    self.handle_batch(events)
        except Exception as error:  # database or dead-letter topic away (or a bug): nothing is done
            self._rewind(consumer, messages)
            self.stop_event.wait(self.outage.failed(error))
            return
        self.outage.recovered()
        self._reported_codes.clear()
        timestamp_type, timestamp_ms = messages[-1].timestamp()
        if timestamp_type != TIMESTAMP_NOT_AVAILABLE:
            self._last_handled_timestamp = timestamp_ms / 1000
        try:
            consumer.store_offsets(offsets=last_offsets(messages))
            self._offsets_stored = True
        except KafkaException as error:  # a partition handed over meanwhile: its new owner repeats it
            log.info("offsets not stored; their partition has a new owner", extra={"error": str(error)})

    def _dead_letter(self, dead: list[tuple[Message, str]]) -> None:
        if self.producer is None:  # made when first needed: most parts seldom see a bad message
            self.producer = self.make_dead_letter_producer()
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        for message, reason in dead:
            topic, partition, offset = position(message)
            headers = [
                *(message.headers() or []),
                ("dlq-reason", reason.encode()),
                ("dlq-consumer-group", self.settings.group_id.encode()),
                ("dlq-source-topic", topic.encode()),
                ("dlq-source-partition", str(partition).encode()),
                ("dlq-source-offset", str(offset).encode()),
            ]
            self.producer.produce(
                self.settings.dead_letter_topic,
                value=message.value(),
                key=message.key(),
                headers=headers,
                on_delivery=delivered,
            )
        undelivered = self.producer.flush(DEAD_LETTER_FLUSH_SECONDS)
        if undelivered or failures:
            # Dropped here: the retry of the batch sends them again.
            self.producer.purge(in_queue=True, in_flight=False)
            self.producer.poll(0)
            raise DeadLetterError(
                f"dead-letter topic took {len(dead) - undelivered - len(failures)} of "
                f"{len(dead)} messages: {failures[:1] or 'timed out'}"
            )
        for message, reason in dead:
            log.warning(
                "dead-lettered a message",
                extra={"reason": reason, "partition": message.partition(), "offset": message.offset()},
            )

    @staticmethod
    def _rewind(consumer: Consumer, messages: list[Message]) -> None:
        """Back to the batch's first offsets, so that it is read again."""
        for partition in first_offsets(messages):
            try:
                consumer.seek(partition)
            except KafkaException:  # handed over meanwhile: the new owner reads it from the commit
                pass

    def _update_lag(self, consumer: Consumer, force: bool = False) -> None:
        """The lag figures, from the client's own positions and the high
        watermarks its fetches brought (no request to the broker)."""
        if not force and time.monotonic() < self._next_lag:
            return
        self._next_lag = time.monotonic() + LAG_INTERVAL_SECONDS
        try:
            assigned = consumer.assignment()
            if not assigned:
                return
            behind = 0
            for partition in consumer.position(assigned):
                _low, high = consumer.get_watermark_offsets(partition, cached=True)
                if high >= 0 and partition.offset >= 0:
                    behind += max(0, high - partition.offset)
        except KafkaException:  # asked again at the next interval
            return
        labels = (self.settings.group_id, self.settings.topic)
        lag_events().labels(*labels).set(behind)
        seconds = 0.0
        if behind and self._last_handled_timestamp is not None:
            seconds = max(0.0, time.time() - self._last_handled_timestamp)
        lag_seconds().labels(*labels).set(seconds)

    def _commit_if_due(self, consumer: Consumer, force: bool = False) -> None:
        if not self._offsets_stored or (not force and time.monotonic() < self._next_commit):
            return
        try:
            if force:
                consumer.commit(asynchronous=False)
            else:
                consumer.commit(asynchronous=True)
            self._offsets_stored = False
        except KafkaException as error:  # a later commit carries these offsets
            if error.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed", extra={"error": str(error)})
        self._next_commit = time.monotonic() + COMMIT_INTERVAL_SECONDS

    def _report_if_due(self) -> None:
        if self.outage.waiting or time.monotonic() < self._next_report:
            return
        error, self._client_error = self._client_error, None
        self._report(True, error.str() if error is not None else None)

    def _report(self, ready: bool, problem: str | None) -> None:
        self._next_report = time.monotonic() + self.settings.heartbeat_seconds
        try:
            self.report_status(ready, problem)
        except Exception as error:  # its database is away: readiness goes red without it
            self._report_outage.failed(error)
        else:
            self._report_outage.recovered()

    def _state_changed(self, problem: str | None) -> None:
        self._report(problem is None, problem)

    def _maintain(self) -> None:
        if self.outage.waiting:
            return
        try:
            self.maintain()
        except Exception as error:  # tried again when the part says it is due
            self._maintenance_outage.failed(error)
        else:
            self._maintenance_outage.recovered()

    def _message_error(self, error: KafkaError) -> None:
        if error.code() not in self._reported_codes:
            self._reported_codes.add(error.code())
            log.warning(
                "consumer error; the client retries",
                extra={"kafka_error": error.name(), "error": error.str()},
            )
        self._check_broker = True

    def _on_client_error(self, error: KafkaError) -> None:
        # Broker down, connection refused...: librdkafka keeps retrying by itself;
        # the loop checks whether the broker answers and says so once.
        if error.fatal():
            self._fatal = error
        else:
            self._client_error = error
            self._check_broker = True

    @staticmethod
    def _on_commit(error: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        if error is not None:  # the next commit carries these offsets again
            log.warning("offset commit failed", extra={"error": str(error)})

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._quiet is not None:
            self._quiet.assigned()
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Hand over with offsets committed, so the next owner repeats little.
        self._commit_if_due(consumer, force=True)
        log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})


def lag_events() -> Any:
    return metrics.gauge(
        "pms_consumer_lag_events",
        "Events in the topic beyond the consumer's position",
        ("group", "topic"),
    )


def lag_seconds() -> Any:
    return metrics.gauge(
        "pms_consumer_lag_seconds",
        "While the consumer lags, the age of the last event it handled; 0 when it has read everything",
        ("group", "topic"),
    )


class _BatchFunctionConsumer(EventConsumer):
    def __init__(
        self, settings: ConsumerSettings, handle: Callable[[list[Event]], None], stop: threading.Event
    ) -> None:
        super().__init__(settings, stop)
        self._handle_events = handle

    def handle_batch(self, events: list[Event]) -> None:
        self._handle_events(events)


def run_consumer(
    settings: ConsumerSettings, handle_batch: Callable[[list[Event]], None], stop: threading.Event
) -> None:
    """The loop for a part that needs nothing but handle_batch: consumes until `stop` is set."""
    _BatchFunctionConsumer(settings, handle_batch, stop).run()
