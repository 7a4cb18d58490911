"""What our Kafka clients ask of the broker: a real broker (Tansu) behind a
proxy that reads the API key of every request a client sends it."""

import socket
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer

from pms_common.consumer import ConsumerSettings, EventConsumer, QuietFetching
from pms_common.kafka import consumer_config, ensure_topics, producer_config
from stack.config import free_ports
from stack.parts import tansu_command, tcp_open
from tests.analytics.helpers import patient_event, produce
from tests.support import wait_for

FETCH, HEARTBEAT, GET_TELEMETRY_SUBSCRIPTIONS = 1, 12, 71


class RequestCountingProxy:
    """Forwards every connection on `port` to the broker and counts the
    requests clients send by API key (a request: a 4-byte size, then the
    API key in its first two bytes)."""

    def __init__(self, port, broker_port):
        self.port, self.broker_port = port, broker_port
        self.requests = Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            threading.Thread(target=self._requests, args=(client, broker), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, client), daemon=True).start()

    def _requests(self, source, target):
        pending = b""
        for chunk in iter(lambda: _read(source), b""):
            target.sendall(chunk)
            pending += chunk
            while len(pending) >= 6:
                size = int.from_bytes(pending[:4], "big")
                if len(pending) < 4 + size:
                    break
                with self._lock:
                    self.requests[int.from_bytes(pending[4:6], "big")] += 1
                pending = pending[4 + size :]
        _close(target)

    @staticmethod
    def _pump(source, target):
        for chunk in iter(lambda: _read(source), b""):
            target.sendall(chunk)
        _close(target)

    def counts(self):
        with self._lock:
            return Counter(self.requests)

    def close(self):
        self._listener.close()


def _read(sock):
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock):
    try:
        sock.close()
    except OSError:
        pass


@pytest.fixture
def counted_broker():
    """A broker that advertises the proxy's address, so that every connection
    a client opens goes through it; yields (bootstrap, proxy)."""
    ports = free_ports(["proxy", "broker"])
    command = tansu_command(ports["broker"], advertised_port=ports["proxy"])
    broker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = RequestCountingProxy(ports["proxy"], ports["broker"])
    try:
        wait_for(lambda: tcp_open(ports["broker"]), message="broker")
        yield f"127.0.0.1:{ports['proxy']}", proxy
    finally:
        proxy.close()
        broker.terminate()
        broker.wait(10)


def test_our_clients_ask_the_broker_for_no_client_telemetry(counted_broker):
    # librdkafka pushes client metrics (KIP-714) unless told not to: each
    # client asks the broker for a telemetry subscription every few seconds,
    # requests an idle system's broker answers for nothing.
    bootstrap, proxy = counted_broker
    topic = f"requests-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic])
    producer = Producer(producer_config(bootstrap))
    producer.produce(topic, b"an event")
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(bootstrap, f"group-{topic}", **{"fetch.wait.max.ms": 200}))
    consumer.subscribe([topic])
    try:
        wait_for(lambda: consumer.poll(0.5), timeout=30, message="the event")
        deadline = time.monotonic() + 5  # idle: fetches and heartbeats go on
        while time.monotonic() < deadline:
            consumer.poll(0.5)
    finally:
        consumer.close()
    counts = proxy.counts()
    assert counts[FETCH] >= 10 and counts[HEARTBEAT] >= 1, counts  # the clients' requests went through it
    assert counts[GET_TELEMETRY_SUBSCRIPTIONS] == 0, counts


class Arrivals(EventConsumer):
    """The kit's loop, noting when each event was handled."""

    def __init__(self, settings):
        super().__init__(settings)
        self.handled_at = []

    def handle_batch(self, events):
        self.handled_at += [time.monotonic()] * len(events)


def fetches_in(proxy, seconds):
    before = proxy.counts()[FETCH]
    time.sleep(seconds)
    return proxy.counts()[FETCH] - before


def test_a_quiet_loop_fetches_once_per_quiet_pace_and_a_message_ends_its_quiet(counted_broker):
    bootstrap, proxy = counted_broker
    topic = f"quiet-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic, f"{topic}-dlq"])
    settings = ConsumerSettings(
        bootstrap,
        f"group-{topic}",
        topic=topic,
        dead_letter_topic=f"{topic}-dlq",
        fetch_wait_ms=200,
        quiet_after_seconds=3.0,
    )
    loop = Arrivals(settings).start()
    try:
        produce(bootstrap, topic, [patient_event()])
        wait_for(lambda: loop.handled_at, timeout=30, message="the first event")
        # Awake: a held fetch of 200 ms after another (fetches of the three partitions may go apart).
        assert fetches_in(proxy, 2.0) >= 8
        time.sleep(settings.quiet_after_seconds)
        quiet = fetches_in(proxy, 4.0)
        assert 2 <= quiet <= 4 / settings.quiet_fetch_seconds + 1, quiet
        sent_at = time.monotonic()
        produce(bootstrap, topic, [patient_event()])
        wait_for(lambda: len(loop.handled_at) == 2, timeout=30, message="the event sent while quiet")
        assert loop.handled_at[1] - sent_at < settings.quiet_fetch_seconds + 0.5
        sent_at = time.monotonic()
        produce(bootstrap, topic, [patient_event()])  # awake again: at once
        wait_for(lambda: len(loop.handled_at) == 3, timeout=30, message="the next event")
        assert loop.handled_at[2] - sent_at < 0.4
    finally:
        loop.stop()


def test_a_loop_whose_held_fetch_is_long_keeps_it_when_quiet():
    long_wait = ConsumerSettings("127.0.0.1:9", "group", fetch_wait_ms=3000)
    assert QuietFetching.of(long_wait) is None
    short_wait = ConsumerSettings("127.0.0.1:9", "group", fetch_wait_ms=200)
    assert QuietFetching.of(short_wait) is not None
