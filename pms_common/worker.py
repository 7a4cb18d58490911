"""Staying up: the frame of every background loop (the outbox relay, billing
retries, the event consumers, start-up steps).

A loop that loses its database, broker or another peer never exits: it waits
with capped exponential backoff and tries again, says so once when it starts
waiting (and once when it resumes), not at every try, and reports whether it
is doing its work. What a part supplies is the step of its loop:

    stop = stop_on_signals()
    run_until_stopped("outbox relay", publish_once, stop)   # publish_once() -> pause

`Outage` is the same state and backoff for a loop with its own shape (the
consumer loop, pms_common.consumer)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from .db_errors import describe_error, error_fields

log = logging.getLogger(__name__)

FIRST_DELAY_SECONDS = 0.5
# The longest wait between tries: it bounds how long a part stays idle after
# its peer is back, and the parts recover one after another (the relay
# publishes, then the consumers count), so each waits a few seconds at most.
MAX_DELAY_SECONDS = 5.0
DATABASE, BROKER, UNEXPECTED = "database", "broker", "unexpected error"


class PeerUnavailable(Exception):
    """A peer did not do what was asked; `peer` names it in the logs."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(message)
        self.peer = peer


def peer_of(error: BaseException) -> str:
    """Which peer an error says is away: the database, the broker, a named
    peer, or none (an unexpected error, logged with its traceback)."""
    if isinstance(error, PeerUnavailable):
        return error.peer
    if _loaded_class_instance(error, "sqlalchemy.exc", "SQLAlchemyError"):
        return DATABASE
    if _kafka_exception(error) is not None:
        return BROKER
    return UNEXPECTED


def _loaded_class_instance(error: BaseException, module: str, name: str) -> bool:
    """Whether the error is an instance of module.name, looked up in
    sys.modules: a process that never loaded the library (a web part and
    Kafka, the launcher and SQLAlchemy) cannot hold its errors, nor need import it."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(error, getattr(loaded, name))


def _kafka_exception(error: BaseException) -> BaseException | None:
    """The error if it is confluent_kafka's KafkaException, else None."""
    return error if _loaded_class_instance(error, "confluent_kafka", "KafkaException") else None


def failure_fields(error: BaseException) -> dict[str, object]:
    """A failure's log fields: a database error by class and SQLSTATE, a
    Kafka error with its code's name, anything else by its text."""
    fields: dict[str, object] = dict(error_fields(error))
    kafka_error = error.args[0] if _kafka_exception(error) is not None and error.args else None
    if kafka_error is not None and hasattr(kafka_error, "name"):
        fields["kafka_error"] = kafka_error.name()
    return fields


class Backoff:
    """Capped exponential delays: first, twice that, ... up to the cap."""

    def __init__(self, first: float = FIRST_DELAY_SECONDS, cap: float = MAX_DELAY_SECONDS) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next_delay(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Outage:
    """Whether an activity waits for a peer, and how long its next wait is.

    `failed(error)` returns the seconds to wait before the next try; it logs
    a warning when the activity starts waiting or the peer it waits for
    changes, and nothing more while the same peer stays away. `recovered()`
    logs once that the activity resumed. `on_change(problem)` hears each
    change: the problem's one-line description, or None once working again."""

    def __init__(
        self,
        activity: str,
        *,
        backoff: Backoff | None = None,
        on_change: Callable[[str | None], None] | None = None,
    ) -> None:
        self.activity = activity
        self.backoff = backoff or Backoff()
        self.on_change = on_change
        self.peer: str | None = None
        self.problem: str | None = None
        self._since = 0.0
        self._tries = 0

    @property
    def waiting(self) -> bool:
        return self.peer is not None

    def failed(self, error: BaseException) -> float:
        peer = peer_of(error)
        delay = self.backoff.next_delay()
        self._tries += 1
        self.problem = describe_error(error)
        if peer != self.peer:
            if self.peer is None:
                self._since, self._tries = time.monotonic(), 1
            self.peer = peer
            log.warning(
                "waiting for a peer; retrying with backoff",
                exc_info=peer == UNEXPECTED,
                extra={"activity": self.activity, "peer": peer, "retry_in_s": delay, **failure_fields(error)},
            )
            if self.on_change is not None:
                self.on_change(self.problem)
        return delay

    def recovered(self) -> None:
        if self.peer is None:
            return
        log.info(
            "peer back; resumed",
            extra={
                "activity": self.activity,
                "peer": self.peer,
                "tries": self._tries,
                "waited_s": round(time.monotonic() - self._since, 1),
            },
        )
        self.peer = self.problem = None
        self.backoff.reset()
        if self.on_change is not None:
            self.on_change(None)


def run_until_stopped(
    activity: str, step: Callable[[], float | None], stop: threading.Event, outage: Outage | None = None
) -> None:
    """Calls step() until `stop` is set or it returns None, pausing as long
    as each call asks; a call that fails waits out the outage's backoff and
    tries again."""
    outage = outage or Outage(activity)
    while not stop.is_set():
        try:
            pause = step()
        except Exception as error:  # every failure is retried: the loop never gives up
            stop.wait(outage.failed(error))
            continue
        outage.recovered()
        if pause is None:
            return
        if pause > 0:
            stop.wait(pause)


def retry_until_done(activity: str, step: Callable[[], object], stop: threading.Event) -> bool:
    """Runs step() until it succeeds once (a start-up migration while the
    database is away); False if stopped first."""
    done = []

    def once() -> None:
        step()
        done.append(True)

    run_until_stopped(activity, once, stop)
    return bool(done)


def stop_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """An event that SIGTERM and SIGINT set: the loops finish what they hold
    and return. Call from the main thread."""
    stop = stop or threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received: stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    return stop
