"""The frame of every background loop (pms_common.worker): capped backoff,
one line when a loop starts waiting and one when it resumes, and a loop that
goes on after any failure."""

import logging
import select
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from pms_common.worker import (
    Backoff,
    Outage,
    PeerUnavailable,
    StopEvent,
    retry_until_done,
    run_until_stopped,
)


def test_delays_double_up_to_the_cap_and_start_again_after_a_success():
    backoff = Backoff(first=0.5, cap=5.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_an_outage_is_said_once_when_it_starts_once_when_the_peer_changes_and_once_when_it_ends(caplog):
    caplog.set_level(logging.DEBUG, logger="pms_common.worker")
    changes = []
    outage = Outage("relay", on_change=changes.append)
    database_down = OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    for _ in range(5):
        outage.failed(database_down)
    outage.failed(PeerUnavailable("broker", "the broker acknowledged 0 of 3 events"))
    assert outage.waiting and changes[-1] is not None
    outage.recovered()
    outage.recovered()  # nothing to say: it was not waiting
    lines = [(r.getMessage(), r.peer) for r in caplog.records]
    assert lines == [
        ("waiting for a peer; retrying with backoff", "database"),
        ("waiting for a peer; retrying with backoff", "broker"),
        ("peer back; resumed", "broker"),
    ]
    assert caplog.records[-1].tries == 6
    assert "refused" not in caplog.records[0].error  # a database error by class and SQLSTATE only
    assert changes == ["ConnectionRefusedError", "the broker acknowledged 0 of 3 events", None]
    assert not outage.waiting and outage.backoff.next_delay() == outage.backoff.first


def test_a_loop_goes_on_after_any_failure_until_stopped(caplog):
    stop = threading.Event()
    calls = []

    def step():
        calls.append(len(calls))
        if len(calls) <= 2:
            raise KeyError("a bug, or a peer we do not know")
        if len(calls) == 4:
            stop.set()
        return 0.0

    run_until_stopped("test loop", step, stop, Outage("test loop", backoff=Backoff(first=0.01)))
    assert calls == [0, 1, 2, 3]
    [waiting] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert waiting.peer == "unexpected error" and waiting.exc_info  # with its traceback, once


@pytest.mark.parametrize("stopped_first", [False, True])
def test_a_start_up_step_is_retried_until_it_succeeds_or_the_part_stops(stopped_first):
    stop = threading.Event()
    attempts = []

    def migrate():
        attempts.append(1)
        if stopped_first:
            stop.set()
        if len(attempts) < 2 or stopped_first:
            raise OperationalError("migrate", {}, ConnectionRefusedError())

    assert retry_until_done("migrations", migrate, stop) is not stopped_first
    assert len(attempts) == (1 if stopped_first else 2)


def test_a_kafka_error_names_the_broker_with_its_code_and_the_helper_loads_no_kafka_client():
    from confluent_kafka import KafkaError, KafkaException

    from pms_common.worker import BROKER, failure_fields, peer_of

    error = KafkaException(KafkaError(KafkaError._TRANSPORT))
    assert peer_of(error) == BROKER
    assert failure_fields(error)["kafka_error"] == "_TRANSPORT"
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, pms_common.worker; print('confluent_kafka' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"


# Signals land while the main thread waits on its stop, over and over; each
# handler sets the stop. A stop whose set() takes the lock its wait() holds
# for a moment hangs on the first that lands inside it.
SIGNALLED_WAITER = """
import os, signal, threading
from pms_common.worker import stop_on_signals

stop = stop_on_signals()
sent = threading.Event()

def send():
    for sent_count in range(3000):
        os.kill(os.getpid(), signal.SIGTERM if sent_count % 2 else signal.SIGINT)
    sent.set()

threading.Thread(target=send, daemon=True).start()
while not sent.is_set():
    stop.wait(0)
    stop.is_set()
print(stop.is_set(), stop.signal_name in ("SIGTERM", "SIGINT"), stop.wait(5))
"""


def test_a_stop_set_by_signals_landing_at_any_moment_never_hangs_its_process():
    finished = subprocess.run(
        [sys.executable, "-c", SIGNALLED_WAITER], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["True", "True", "True"]


def test_a_set_from_another_thread_ends_a_wait_at_once_and_the_pipe_says_so_to_a_poll_of_its_own():
    stop = StopEvent()
    assert not stop.wait(0.01) and not stop.is_set()
    poller = select.poll()
    poller.register(stop.fd, select.POLLIN)
    assert poller.poll(0) == []
    setter = threading.Timer(0.2, stop.set)
    setter.start()
    started = time.monotonic()
    assert stop.wait(30)
    assert time.monotonic() - started < 5
    assert poller.poll(0) and stop.is_set()
    stop.clear()
    assert not stop.is_set() and poller.poll(0) == []
