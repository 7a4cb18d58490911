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
import math
import os
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
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
    log.info("stopping", extra={"activity": activity, "signal": getattr(stop, "signal_name", None)})


def retry_until_done(activity: str, step: Callable[[], object], stop: threading.Event) -> bool:
    """Runs step() until it succeeds once (a start-up migration while the
    database is away); False if stopped first."""
    done = []

    def once() -> None:
        step()
        done.append(True)

    run_until_stopped(activity, once, stop)
    return bool(done)


class StopEvent(threading.Event):
    """An Event that a signal handler may set. threading.Event's set() takes
    a lock that is not reentrant: a handler that runs while its own thread
    holds it (in a wait, or in the set() of an earlier signal) would wait for
    it forever. This one's set() takes no lock and writes a byte to a pipe;
    wait() polls that pipe, so `fd` also serves a select/poll of its own.
    Its pipe is not meant to outlive a fork: make a new one in the child."""

    def __init__(self) -> None:
        super().__init__()
        self.fd, self._write_end = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_end, False)
        self._flag = False
        # The signal that set it, for the logs of whoever stops (None: set otherwise).
        self.signal_name: str | None = None
        weakref.finalize(self, _close_all, self.fd, self._write_end)

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        try:
            os.write(self._write_end, b"x")
        except BlockingIOError:  # the pipe is full: it is readable already
            pass

    def set_by_signal(self, signum: int) -> None:
        if not self._flag:
            self.signal_name = signal.Signals(signum).name
        self.set()

    def clear(self) -> None:
        self._flag = False
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        wait_readable([self.fd], timeout)
        return self._flag


def wait_readable(descriptors: Iterable[int | None], seconds: float | None) -> set[int]:
    """The descriptors (None entries left out) that became readable, or
    hung up, within `seconds` (None: no limit); one poll, so a loop that waits
    for its work and its StopEvent together wakes for either and nothing
    else. With no descriptor to wait on, a sleep of `seconds`."""
    waited = [descriptor for descriptor in descriptors if descriptor is not None]
    if not waited:
        if seconds is not None:
            time.sleep(max(0.0, seconds))
        return set()
    poller = select.poll()
    for descriptor in waited:
        poller.register(descriptor, select.POLLIN)
    timeout = None if seconds is None else math.ceil(max(0.0, seconds) * 1000)
    return {descriptor for descriptor, _events in poller.poll(timeout)}


def _close_all(*descriptors: int) -> None:
    for descriptor in descriptors:
        os.close(descriptor)


def stop_on_signals(stop: StopEvent | None = None) -> StopEvent:
    """An event that SIGTERM and SIGINT set: the loops finish what they hold
    and return (run_until_stopped logs which signal). Call from the main
    thread. The handler only sets the event: a log line written from it
    could interrupt one being written (a reentrant write of stdout fails)."""
    stop = stop or StopEvent()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set_by_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    return stop
