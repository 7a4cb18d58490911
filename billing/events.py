"""Patient events from Kafka: a deleted patient's account is closed.

At least once: an offset is stored only after the close is committed to the
database, so a crash repeats the close, which changes nothing the second time.
A message that is not a valid PatientEvent is logged and skipped."""
import logging
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaException
from google.protobuf.message import DecodeError
from sqlalchemy.exc import SQLAlchemyError

from pms_common.events import DELETED, EVENT_TYPES, PatientEvent
from pms_common.kafka import consumer_config

log = logging.getLogger(__name__)
COMMIT_INTERVAL_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


def decode(value):
    """The event, or None when the bytes are not a usable PatientEvent."""
    try:
        event = PatientEvent.FromString(value or b"")
        uuid.UUID(event.patientId)
    except (DecodeError, ValueError):
        return None
    return event if event.event_type in EVENT_TYPES else None


class PatientEventConsumer:
    def __init__(self, store, bootstrap_servers, group_id, topic, poll_seconds=0.5):
        self.store = store
        self.topic = topic
        self.poll_seconds = poll_seconds
        self._config = consumer_config(
            bootstrap_servers, group_id, error_cb=self._on_client_error,
            # librdkafka logs each reconnect attempt; its errors reach error_cb
            # anyway, which reports each kind once.
            log_level=2,
            # Notice a topic created after start-up within seconds, not minutes.
            **{"topic.metadata.refresh.interval.ms": 5000})
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="patient-events", daemon=True)
        self._reported = set()  # problems said once since the last message
        self._fatal = None  # set by the client when it cannot go on: a new one is made

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout=15.0):
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self):
        while not self._stopping.is_set():
            try:
                self._consume()
            except Exception:  # a fatal client error or a bug must not end event handling for good
                log.exception("patient event consumer failed; restarting in 5s")
                self._stopping.wait(5.0)
        log.info("patient event consumer stopped")

    def _consume(self):
        self._fatal = None
        consumer = Consumer(self._config)
        consumer.subscribe([self.topic], on_assign=self._on_assign)
        stored_since_commit = False
        last_commit = time.monotonic()
        try:
            while not self._stopping.is_set():
                message = consumer.poll(self.poll_seconds)
                if self._fatal is not None:
                    raise KafkaException(self._fatal)
                if message is not None and message.error():
                    self._problem(message.error())
                elif message is not None:
                    self._reported.clear()
                    if not self._apply(message):
                        return  # stopping before the effect was stored: leave the offset
                    try:
                        consumer.store_offsets(message)
                        stored_since_commit = True
                    except KafkaException as exc:  # partition revoked meanwhile: its new owner repeats it
                        log.info("offset not stored", extra={"error": str(exc)})
                if stored_since_commit and time.monotonic() - last_commit >= COMMIT_INTERVAL_SECONDS:
                    consumer.commit(asynchronous=True)
                    stored_since_commit, last_commit = False, time.monotonic()
        finally:
            if stored_since_commit:
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:
                    log.warning("final offset commit failed; events may be applied again",
                                extra={"error": str(exc)})
            consumer.close()

    def _apply(self, message):
        """Applies one message, retrying while the database fails. False if
        asked to stop before it could be applied."""
        event = decode(message.value())
        if event is None:
            log.warning("skipped a message that is not a patient event",
                        extra={"partition": message.partition(), "offset": message.offset()})
            return True
        if event.event_type != DELETED:
            return True
        delay = 0.5
        while not self._stopping.is_set():
            try:
                account = self.store.close_account(uuid.UUID(event.patientId))
            except SQLAlchemyError as exc:
                log.warning("could not close account; retrying",
                            extra={"patient_id": event.patientId, "error": str(exc)})
                self._stopping.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            log.info("patient deleted: account closed" if account else
                     "patient deleted: no billing account to close",
                     extra={"patient_id": event.patientId, "event_id": event.event_id,
                            "account_id": account.account_id if account else None})
            return True
        return False

    def _on_assign(self, _consumer, partitions):
        self._reported.clear()
        log.info("consuming patient events", extra={"partitions": [p.partition for p in partitions]})

    def _on_client_error(self, error):
        if error.fatal():
            self._fatal = error
        else:
            self._problem(error)

    def _problem(self, error):
        # The client retries by itself (e.g. while the broker is down): say
        # so once, not every few milliseconds.
        level = logging.DEBUG if error.code() in self._reported else logging.WARNING
        self._reported.add(error.code())
        log.log(level, "kafka: %s (retrying)", error.str(), extra={"kafka_error": error.name()})
