"""The transactional outbox: record an event with the change, publish it later.

record_event() adds the event row to the session of the change (a create
inserts outbox_row() beside its own row), so both commit or neither does.
OutboxRelay publishes unpublished rows in order and marks them
published only after the broker acknowledged them: a broker that is down
delays events, never loses them (delivery is at least once; consumers drop
repeats by event id). patient.worker runs it in a loop that waits out an
outage of the database or the broker.

Several copies of patient, each with its relay, may run on one database:
only the relay that holds the lease publishes, and the others stand by,
asking for it again every STANDBY_RETRY_SECONDS. On PostgreSQL the lease is
a session advisory lock on a connection of its own, which PostgreSQL drops
when the holder's process dies; on SQLite (one host) it is a lock on a file
beside the database. One publisher at a time is what keeps one patient's
events in order: per-row claims (FOR UPDATE SKIP LOCKED) would let a second
relay send a patient's later event while the first still held the earlier
one. The price is that one relay carries the whole outbox; a batch of many
events per broker round trip is what makes that enough.

An idle relay does not poll: it waits on its lease until a writer wakes it
(`wait_for_events`), and looks at the outbox anyway every
WOKEN_IDLE_WAIT_SECONDS in case a wake-up was lost. On PostgreSQL a trigger
on the outbox table NOTIFYs the holder's listening session when a
transaction that wrote an event commits (migration 0007); on SQLite the
writer writes a byte into a FIFO beside the database, which the holder keeps
open (`wake_the_relay`).

The lease holds no transaction: rows are read, the transaction ends, and
only then does the relay wait for the broker, so a broker that is down
never blocks a writer. The cost is a window between the broker's
acknowledgement and the commit that marks the rows: a relay that dies there
leaves rows the topic already holds. Its successor (and the same relay after
a batch the broker did not fully take) first reads the topic from just
before the oldest unpublished row and marks what it finds instead of sending
it again (mark_what_the_topic_holds). A duplicate remains possible only
when a holder loses its database session while it lives with a batch in
flight, and another relay takes the lease and sends that batch before the
broker appended the first copy; consumers drop such a repeat by its event id."""

import contextlib
import fcntl
import logging
import os
import socket
import stat
import time
import uuid
import zlib
from datetime import timedelta

import psycopg
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from flask import after_this_request, has_request_context, request

from pms_common.db import autocommit_connection, create_engine, padded_for_in
from pms_common.events import CREATED, DELETED, PatientEvent
from pms_common.identity import ROLE_HEADER, USER_HEADER
from pms_common.kafka import consumer_config, producer_config
from pms_common.models import utcnow
from pms_common.protos.patient_event_pb2 import AuditContext
from pms_common.telemetry import (
    TRACEPARENT,
    continued_from,
    current_traceparent,
    instrumented,
    traced_producer,
)
from pms_common.worker import BROKER, DATABASE, PeerUnavailable, StopEvent, wait_readable

from .extensions import db
from .models import OutboxEvent, Patient
from .schemas import PatientSchema

log = logging.getLogger(__name__)


# The response header naming the event a change wrote: the audit collector
# leaves a 2xx change that has one to the event's entry (audit/collector.py).
AUDIT_EVENT_HEADER = "X-Audit-Event"
# Model attribute -> the field's name in the API, for the fields a client sets.
_API_FIELD_NAMES = {
    (field.attribute or name): (field.data_key or name)
    for name, field in PatientSchema().fields.items()
    if not field.dump_only
}


def changed_field_names(patient, event_type):
    """The API names of the fields a change set (never their values): every
    set field of a create, those whose value the session saw change in an
    update, none for a delete."""
    if event_type == DELETED:
        return []
    if event_type == CREATED:
        return sorted(name for attr, name in _API_FIELD_NAMES.items() if getattr(patient, attr) is not None)
    state = sa.inspect(patient)
    return sorted(name for attr, name in _API_FIELD_NAMES.items() if state.attrs[attr].history.has_changes())


def audit_context(patient, event_type, event_id):
    """Who asked for the change, from the gateway's headers; None outside a
    request (the dev seed). The response names the event, for the collector."""
    if not has_request_context():
        return None
    headers = request.headers
    forwarded = headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()

    @after_this_request
    def name_the_event(response):
        response.headers[AUDIT_EVENT_HEADER] = str(event_id)
        return response

    return AuditContext(
        actor_email=headers.get(USER_HEADER, ""),
        actor_role=headers.get(ROLE_HEADER, ""),
        request_id=headers.get("X-Request-Id", ""),
        client_address=headers.get("X-Envoy-External-Address", "").strip() or forwarded,
        changed_fields=changed_field_names(patient, event_type),
    )


def outbox_row(patient, event_type):
    """The outbox row of an event about the patient as it is now, with the
    request it came from (the audit trail's entry of the change)."""
    event_id = uuid.uuid4()
    occurred_at = utcnow()
    event = PatientEvent(
        audit=audit_context(patient, event_type, event_id),
        patientId=str(patient.id),
        name=patient.name,
        email=patient.email,
        event_type=event_type,
        event_id=str(event_id),
        occurred_at=occurred_at.isoformat().replace("+00:00", "Z"),
        address=patient.address,
        date_of_birth=patient.date_of_birth.isoformat(),
        registered_date=patient.registered_date.isoformat(),
    )
    return {
        "event_id": event_id,
        "patient_id": patient.id,
        "event_type": event_type,
        "payload": event.SerializeToString(),
        "created_at": occurred_at,
        # The request's trace, continued where the event is published and consumed.
        "trace_context": current_traceparent(),
    }


def _bound(table, prefix, columns):
    return {name: sa.bindparam(prefix + name, type_=table.c[name].type) for name in columns}


_EVENT_COLUMNS = ("event_id", "patient_id", "event_type", "payload", "created_at", "trace_context")
_OUTBOX = OutboxEvent.__table__
# Built once (a statement object memoizes its cache key): the two INSERTs of
# a create, and on PostgreSQL both in one statement, the patient's as a CTE.
_INSERT_PATIENT = sa.insert(Patient.__table__)
_INSERT_EVENT = sa.insert(_OUTBOX)
_INSERT_PATIENT_WITH_EVENT = (
    sa.insert(_OUTBOX)
    .values(_bound(_OUTBOX, "event_", _EVENT_COLUMNS))
    .add_cte(
        sa.insert(Patient.__table__)
        .values(_bound(Patient.__table__, "patient_", Patient.__table__.c.keys()))
        .cte("new_patient")
    )
)


# The relay's statements, built once too.
_NEXT_ROWS = (
    sa.select(
        _OUTBOX.c.id,
        _OUTBOX.c.event_id,
        _OUTBOX.c.patient_id,
        _OUTBOX.c.event_type,
        _OUTBOX.c.payload,
        _OUTBOX.c.created_at,
        _OUTBOX.c.trace_context,
    )
    .where(_OUTBOX.c.published_at.is_(None))
    .order_by(_OUTBOX.c.id)
    .limit(sa.bindparam("batch_size"))
)
_MARK_PUBLISHED = {
    column: sa.update(_OUTBOX)
    .where(_OUTBOX.c[column].in_(sa.bindparam("values", expanding=True)), _OUTBOX.c.published_at.is_(None))
    .values(published_at=sa.bindparam("now"))
    for column in ("id", "event_id")
}


def wake_the_relay():
    """Wakes the relay that holds the outbox's lease after a commit that wrote
    an event. PostgreSQL's trigger has done it already; on SQLite this writes
    a byte into the FIFO the holder keeps open, and does nothing when no
    relay listens (nobody has it open) or one was woken already (it is full)."""
    path = wake_path(db.engine)
    if path is None:
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no FIFO yet, or no relay has it open (ENXIO)
        return
    try:
        os.write(descriptor, b"\0")
    except BlockingIOError:
        pass
    finally:
        os.close(descriptor)


def insert_with_event(patient_row, event_row):
    """Writes a new patient and its event atomically. On PostgreSQL that is
    one statement in autocommit: one round trip, not four (BEGIN, two
    INSERTs, COMMIT; bench/README.md, "The create path"). SQLite, in process,
    has no round trips to save and no INSERT in a WITH clause."""
    if db.engine.dialect.name == "postgresql":
        params = {
            **{"patient_" + key: value for key, value in patient_row.items()},
            **{"event_" + key: event_row[key] for key in _EVENT_COLUMNS},
        }
        with autocommit_connection(db) as connection:
            connection.execute(_INSERT_PATIENT_WITH_EVENT, params)
    else:
        with db.engine.begin() as connection:
            connection.execute(_INSERT_PATIENT, patient_row)
            connection.execute(_INSERT_EVENT, event_row)
        wake_the_relay()


def record_event(patient, event_type):
    """Adds the event to the session of the change (flushed after it)."""
    db.session.add(OutboxEvent(**outbox_row(patient, event_type)))


# One outbox, one publisher: every relay of this database asks for this
# PostgreSQL advisory lock, and only its holder publishes.
RELAY_LOCK_KEY = zlib.crc32(b"patient outbox relay")
# How often a relay that does not hold the lease asks for it again: a holder
# that died is replaced within about this long.
STANDBY_RETRY_SECONDS = 1.0
# A message's timestamp is the sending relay's clock, a row's created_at the
# writer's: the look at what the topic already holds starts this much before
# the oldest unpublished row, so that clocks that differ miss nothing.
CLOCK_SKEW = timedelta(minutes=1)
# The look at the topic reads partitions by assignment: it never joins this group or commits.
TOPIC_CHECK_GROUP = "patient-outbox-relay-check"
# What the outbox's trigger NOTIFYs on PostgreSQL (migration 0007).
OUTBOX_CHANNEL = "patient_outbox"
# How long an idle relay that writers wake waits before it looks at the outbox
# anyway: an event whose wake-up was lost waits at most this long. A relay that
# takes the lease again (its session was replaced) looks at once, so a lost
# wake-up is rare; each look is a query (bench/README.md, P7).
WOKEN_IDLE_WAIT_SECONDS = 10.0
# How often a relay waiting to be woken looks whether a plain threading.Event
# asked it to stop; a StopEvent's pipe is waited on beside the wake-up instead.
STOP_CHECK_SECONDS = 0.5


class PostgresLease:
    """A session advisory lock on a connection of its own, outside the pool,
    that holds no transaction. PostgreSQL keeps the lock until that session
    ends: the holder released it, or its process died and the socket closed.
    Its session is named in pg_stat_activity (`patient outbox relay host:pid`)
    and LISTENs on OUTBOX_CHANNEL, which the outbox's trigger notifies."""

    wakes_on_events = True

    def __init__(self, url):
        # Its one connection stays checked out while the lease is held.
        self._engine = create_engine(url.render_as_string(hide_password=False), autocommit=True)
        self._connection = None
        self.held = False

    def hold(self):
        """Whether this relay holds the lease now: kept (its session still
        answers) or taken now. Raises when the database does not answer; the
        lease is then lost."""
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
                self._connection.execute(
                    sa.text("SELECT set_config('application_name', :name, false)"),
                    {"name": f"patient outbox relay {socket.gethostname()}:{os.getpid()}"},
                )
            if self.held:
                self._connection.execute(sa.text("SELECT 1"))
                self._take_wake_ups(0)  # the look at the outbox that follows serves them
            else:
                self.held = bool(
                    self._connection.scalar(
                        sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LOCK_KEY}
                    )
                )
                if self.held:  # only the holder listens: a standby would only pile them up
                    self._connection.execute(sa.text(f"LISTEN {OUTBOX_CHANNEL}"))
        except sa.exc.SQLAlchemyError:
            self.release()
            raise
        except psycopg.Error as error:  # raised by the listening, not through SQLAlchemy
            self.release()
            raise PeerUnavailable(DATABASE, f"the relay's session broke: {error}") from error
        return self.held

    def wait_for_events(self, seconds, stop_descriptor=None):
        """Waits up to `seconds` for a writer's notification, or until
        `stop_descriptor` (a pipe) is readable; True when a notification came
        (every one that came is taken). Raises when the session broke; the
        lease is then lost."""
        if self._connection is None:
            wait_readable([stop_descriptor], seconds)
            return False
        try:
            return self._take_wake_ups(seconds, stop_descriptor)
        except psycopg.Error as error:
            self.release()
            raise PeerUnavailable(DATABASE, f"the relay's session broke: {error}") from error

    def _take_wake_ups(self, seconds, stop_descriptor=None):
        """Takes every notification that came, waiting up to `seconds` for
        one if none has: one look at the outbox serves them all. The wait is
        one poll of the session's socket (and the stop pipe), not psycopg's
        own, which wakes ten times a second to see signals."""
        listener = self._connection.connection.driver_connection
        # Those that came while the session ran the lease's statements wait in
        # psycopg's backlog, not on the socket: taken before the socket is waited on.
        if self._take_notifications(listener):
            return True
        if seconds <= 0:
            return False
        session = listener.fileno()
        if session not in wait_readable([session, stop_descriptor], seconds):
            return False
        # Readable for another message (a notice), or the session's end, which this read raises.
        return self._take_notifications(listener)

    @staticmethod
    def _take_notifications(listener):
        """Whether any notification had come (all are taken); does not wait."""
        return sum(1 for _ in listener.notifies(timeout=0)) > 0

    def release(self):
        """Ends the session, and with it the lock."""
        connection, self._connection, self.held = self._connection, None, False
        if connection is not None:
            try:
                connection.close()
            except sa.exc.SQLAlchemyError:  # already gone: so is the lock
                pass

    def dispose(self):
        self.release()
        self._engine.dispose()


class FileLease:
    """SQLite's lease: an exclusive lock on a file beside the database, which
    the kernel drops when the holder's process dies. SQLite serves one host,
    so every relay of it is on this one, and so is every writer: the holder
    keeps a FIFO beside the database open, which writers wake it through
    (`wake_the_relay`). It opens the FIFO for writing too, so that it never
    reads an end of file when writers close theirs."""

    wakes_on_events = True

    def __init__(self, path, wake_path=None):
        self.path = path
        self.wake_path = wake_path
        self._descriptor = None
        self._wake_descriptor = None
        self.held = False

    def hold(self):
        if self.held:
            return True
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._descriptor, self.held = descriptor, True
        if self.wake_path is not None:
            self._wake_descriptor = open_fifo(self.wake_path)
        return True

    def wait_for_events(self, seconds, stop_descriptor=None):
        """Waits up to `seconds` for a writer's byte, or until
        `stop_descriptor` (a pipe) is readable; True when a byte came (every
        byte that came is taken)."""
        if self._wake_descriptor not in wait_readable([self._wake_descriptor, stop_descriptor], seconds):
            return False
        try:
            while os.read(self._wake_descriptor, 4096):
                pass
        except BlockingIOError:
            pass
        return True

    def release(self):
        descriptor, self._descriptor, self.held = self._descriptor, None, False
        wake_descriptor, self._wake_descriptor = self._wake_descriptor, None
        if wake_descriptor is not None:
            os.close(wake_descriptor)
        if descriptor is not None:
            os.close(descriptor)

    def dispose(self):
        self.release()


class SoleLease:
    """An in-memory SQLite database has one process and one relay: always held."""

    held = True
    wakes_on_events = False

    def hold(self):
        return True

    def wait_for_events(self, seconds, stop_descriptor=None):
        wait_readable([stop_descriptor], seconds)
        return False

    def release(self):
        pass

    def dispose(self):
        pass


def sqlite_file(engine):
    """The file of a SQLite database; None for PostgreSQL or a database in memory."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if database and database != ":memory:" and not database.startswith("file::memory:"):
        return database
    return None


def wake_path(engine):
    """The FIFO that wakes the relay of this SQLite database; None on PostgreSQL
    (its trigger notifies) and in memory (one process, whose relay looks often)."""
    database = sqlite_file(engine)
    return f"{database}.outbox-relay.wake" if database else None


def open_fifo(path):
    """The FIFO at `path` (made when missing), open to read and write without blocking."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(os.stat(path).st_mode):  # not ours: a FIFO replaces it
            os.unlink(path)
            os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def lease_for(engine):
    """The lease that the relays of this database take turns with."""
    if engine.dialect.name == "postgresql":
        return PostgresLease(engine.url)
    database = sqlite_file(engine)
    if database:
        return FileLease(f"{database}.outbox-relay.lock", wake_path(engine))
    return SoleLease()


def event_headers(row, traced):
    """The Kafka headers of an outbox row's event. Its stored traceparent is
    passed on as it is when the send is not traced (a tracing producer sets
    its own, a child of the stored one)."""
    headers = [("event_id", str(row.event_id)), ("event_type", row.event_type)]
    if row.trace_context and not traced:
        headers.append((TRACEPARENT, row.trace_context))
    return headers


class OutboxRelay:
    """Publishes the outbox while it holds the lease; `publish_pending` does
    nothing but ask for it while another relay holds it."""

    def __init__(self, bootstrap_servers, topic, batch_size=500, ack_timeout=10.0, lease=None):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self.lease = lease or lease_for(db.engine)
        # False until the topic was checked for rows a relay sent but did not
        # mark: after taking the lease, and after a batch the broker did not
        # fully acknowledge (it may append a message the relay gave up on).
        self._topic_checked = False
        self.untraced_producer = Producer(
            producer_config(
                bootstrap_servers,
                # One request in flight keeps one patient's events in order across retries.
                **{"max.in.flight.requests.per.connection": 1},
            )
        )
        # With tracing on, a send of a sampled event is a span of its trace and
        # sets its traceparent header; both send through the same producer.
        self.producer = traced_producer(self.untraced_producer)

    @property
    def holds_lease(self):
        return self.lease.held

    @property
    def wakes_on_events(self):
        """Whether writers wake this relay (else an idle relay looks again after a pause)."""
        return self.lease.wakes_on_events

    def wait_for_events(self, seconds, stop):
        """Waits until a writer wakes the relay, `seconds` pass or `stop` is
        set; True when woken. A StopEvent ends the wait at once (its pipe is
        waited on with the wake-up); another Event is looked at every
        STOP_CHECK_SECONDS."""
        stop_descriptor = stop.fd if isinstance(stop, StopEvent) else None
        longest_wait = seconds if stop_descriptor is not None else STOP_CHECK_SECONDS
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.lease.wait_for_events(min(remaining, longest_wait), stop_descriptor):
                return True
        return False

    def publish_pending(self):
        """Publishes one batch; returns how many events the broker acknowledged
        (0 while another relay holds the lease). Raises PeerUnavailable when it
        did not take them all: those stay in the outbox (the acknowledged ones
        are marked published first)."""
        if not self.lease.held:
            self._topic_checked = False
        if not self.lease.hold():
            return 0
        if not self._topic_checked:
            self.mark_what_the_topic_holds()
            self._topic_checked = True
        rows = self._next_rows()
        if not rows:
            return 0
        acknowledged, failures = [], []

        def on_delivery(err, _msg, row_id):
            if err is None:
                acknowledged.append(row_id)
            else:
                failures.append(err)

        for row in rows:
            while True:
                try:
                    traced = instrumented(row.trace_context)
                    # Only a traced send reads the trace from the context; an
                    # untraced one carries the stored traceparent in its headers.
                    with continued_from(row.trace_context) if traced else contextlib.nullcontext():
                        (self.producer if traced else self.untraced_producer).produce(
                            self.topic,
                            key=str(row.patient_id),
                            value=row.payload,
                            headers=event_headers(row, traced),
                            on_delivery=lambda err, msg, row_id=row.id: on_delivery(err, msg, row_id),
                        )
                    break
                except BufferError:  # local queue full: let deliveries drain, then go on
                    self.producer.poll(0.1)
                except KafkaException as exc:  # the row stays in the outbox for the next batch
                    failures.append(exc.args[0])
                    break
            self.producer.poll(0)
        if self.producer.flush(self.ack_timeout):
            # Not sent in time (broker down): drop the local copies, so the next
            # round re-sends from the outbox instead of adding late duplicates.
            self.producer.purge(in_queue=True, in_flight=False)
            self.producer.poll(0)
        if acknowledged:
            self._mark_published("id", acknowledged)
        if len(acknowledged) < len(rows):
            self._topic_checked = False
            raise PeerUnavailable(
                BROKER,
                f"the broker acknowledged {len(acknowledged)} of {len(rows)} "
                f"events: {failures[0] if failures else 'timed out'}",
            )
        return len(acknowledged)

    def _next_rows(self):
        """The next batch's unpublished rows, oldest first: one statement in
        autocommit (Core, no session), so no transaction is held while the
        broker is waited for."""
        with autocommit_connection(db) as connection:
            return connection.execute(_NEXT_ROWS, {"batch_size": self.batch_size}).all()

    def _mark_published(self, column, values):
        """Marks the rows whose `column` ("id" or "event_id") is in `values`
        published: one UPDATE in autocommit; a row already marked stays as it
        was. Only rows the broker holds are marked, so an UPDATE that PostgreSQL
        still runs after its relay died (waiting on a lock) is right too."""
        with autocommit_connection(db) as connection:
            connection.execute(_MARK_PUBLISHED[column], {"values": padded_for_in(values), "now": utcnow()})

    def mark_what_the_topic_holds(self):
        """Marks published, without sending them again, the next batch's rows
        that the topic already holds: a relay sent them and the broker took
        them, but that relay did not live (or hold the lease) to mark them.
        Returns how many. Only the next batch can be such rows, since a relay
        marks each batch before it reads the next."""
        rows = self._next_rows()
        if not rows:
            return 0
        unmarked = {str(row.event_id) for row in rows}
        since = min(row.created_at for row in rows) - CLOCK_SKEW
        try:
            sent = self._event_ids_on_topic(since)
        except KafkaException as error:
            raise PeerUnavailable(
                BROKER, f"the topic could not be read before publishing: {error}"
            ) from error
        on_topic = [uuid.UUID(event_id) for event_id in sent & unmarked]
        if on_topic:
            self._mark_published("event_id", on_topic)
            log.info("marked events that the topic already held", extra={"events": len(on_topic)})
        return len(on_topic)

    def _event_ids_on_topic(self, since):
        """The event ids of the topic's messages sent at `since` or later
        (a broker that cannot look up offsets by time gives them all)."""
        consumer = Consumer(
            consumer_config(self.bootstrap_servers, TOPIC_CHECK_GROUP, **{"enable.partition.eof": True})
        )
        try:
            metadata = consumer.list_topics(self.topic, timeout=self.ack_timeout).topics.get(self.topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                return set()  # no topic yet: nothing was sent
            since_ms = int(since.timestamp() * 1000)
            starts = consumer.offsets_for_times(
                [TopicPartition(self.topic, partition, since_ms) for partition in metadata.partitions],
                timeout=self.ack_timeout,
            )
            for start in starts:
                if start.error is not None:
                    raise KafkaException(start.error)
            # An offset below zero: the partition has nothing sent that late.
            starts = [start for start in starts if start.offset >= 0]
            consumer.assign(starts)
            unread, found = {start.partition for start in starts}, set()
            last_read = time.monotonic()
            while unread:
                message = consumer.poll(0.1)
                if message is None:
                    if time.monotonic() - last_read > self.ack_timeout:
                        raise PeerUnavailable(BROKER, f"the topic {self.topic} could not be read to its end")
                    continue
                last_read = time.monotonic()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        unread.discard(message.partition())
                    elif error.fatal():
                        raise KafkaException(error)
                    continue
                found.update(
                    value.decode() for key, value in message.headers() or () if key == "event_id" and value
                )
            return found
        finally:
            consumer.close()

    def backlog(self):
        return db.session.scalar(
            sa.select(sa.func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        )

    def close(self):
        self.producer.flush(self.ack_timeout)
        self.lease.dispose()
