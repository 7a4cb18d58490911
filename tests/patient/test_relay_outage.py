"""The outbox relay outlives its database: with PostgreSQL away it waits
and retries (said once), keeps running, and publishes once it is back."""

import logging
import threading
import time
import uuid

import pytest

from patient.worker import run
from pms_common.kafka import ensure_topics
from tests.patient.conftest import VALID
from tests.patient.test_outbox import consume
from tests.tcp_switch import require_postgres, switched


@pytest.fixture
def database_kind():
    require_postgres()
    return "postgres"


@pytest.fixture
def switch(database_url):
    with switched(database_url) as running:
        yield running


def lines_of(caplog, activity):
    return [record for record in caplog.records if getattr(record, "activity", None) == activity]


def test_the_relay_waits_out_a_database_outage_and_then_publishes(
    make_app, switch, database_url, broker, caplog
):
    caplog.set_level(logging.INFO)
    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    settings = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "EVENTS_TOPIC": topic}
    api = make_app(**settings).test_client()  # the API keeps its database throughout
    relayed = make_app(DATABASE_URL=switch.url_for(database_url), **settings)
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(relayed, stop), name="patient-worker")
    worker.start()
    try:
        first = api.post("/patients", json=VALID).get_json()["id"]
        assert [key for key, _ in consume(broker.bootstrap, topic, 1)] == [first]

        switch.off()
        second = api.post("/patients", json={**VALID, "email": "grace@example.com"}).get_json()["id"]
        time.sleep(4)  # tries after 0.5, 1 and 2 s fail
        assert worker.is_alive()
        switch.on()
        published = consume(broker.bootstrap, topic, 2, timeout=30)
        assert [key for key, _ in published] == [first, second]
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()

    waiting, resumed, stopping = lines_of(caplog, "outbox relay")  # once each, not once per try
    assert stopping.getMessage() == "stopping"
    assert (waiting.getMessage(), waiting.levelname, waiting.peer) == (
        "waiting for a peer; retrying with backoff",
        "WARNING",
        "database",
    )
    assert (resumed.getMessage(), resumed.peer) == ("peer back; resumed", "database")
    assert resumed.tries >= 3 and resumed.waited_s >= 3
