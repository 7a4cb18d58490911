"""Updates and deletes keep the event stream in step with the database: a PUT
that changes nothing writes nothing, and of writers racing on one ETag
exactly one changes the row and writes its event; the rest get 412 and write
none. Through a real HTTP server, with concurrent connections, on SQLite and
PostgreSQL."""

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
import sqlalchemy as sa

from patient.extensions import db
from patient.models import OutboxEvent
from pms_common.events import DELETED, UPDATED, PatientEvent
from pms_common.identity import ADMIN
from tests.http_server import serving_over_http
from tests.patient.conftest import VALID
from tests.support import identity_headers

ROUNDS, WRITERS = 50, 10
EDITABLE = ("name", "email", "address", "dateOfBirth", "registeredDate")
AS_ADMIN = identity_headers(ADMIN)


@pytest.fixture
def server(app):
    with serving_over_http(app) as base_url:
        yield base_url


def events_of(app, patient_id):
    """The patient's events, oldest first, decoded."""
    with app.app_context():
        payloads = db.session.scalars(
            sa.select(OutboxEvent.payload)
            .where(OutboxEvent.patient_id == uuid.UUID(patient_id))
            .order_by(OutboxEvent.id)
        ).all()
        db.session.remove()
    return [PatientEvent.FromString(payload) for payload in payloads]


def as_body(event):
    return {
        "name": event.name,
        "email": event.email,
        "address": event.address,
        "dateOfBirth": event.date_of_birth,
        "registeredDate": event.registered_date,
    }


def editable(state):
    return {key: state[key] for key in EDITABLE}


def read(url):
    response = requests.get(url, headers=AS_ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["ETag"]


def all_at_once(requests_to_send):
    """Sends (method, url, body, headers) each on its own connection, released
    together; returns what each got: status, JSON body, ETag."""
    barrier = threading.Barrier(len(requests_to_send))

    def send(request):
        method, url, body, headers = request
        with requests.Session() as session:
            barrier.wait()
            response = session.request(method, url, json=body, headers={**AS_ADMIN, **headers}, timeout=60)
        return SimpleNamespace(
            status=response.status_code,
            body=response.json() if response.content else None,
            etag=response.headers.get("ETag"),
        )

    with ThreadPoolExecutor(len(requests_to_send)) as pool:
        return list(pool.map(send, requests_to_send))


def create_patient(server, **changes):
    response = requests.post(f"{server}/patients", json={**VALID, **changes}, headers=AS_ADMIN, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_put_that_changes_nothing_writes_nothing_and_answers_the_current_state(app, server):
    created = create_patient(server)
    url = f"{server}/patients/{created['id']}"
    state, etag = read(url)
    for headers in ({}, {"If-Match": etag}):
        response = requests.put(url, json=editable(state), headers={**AS_ADMIN, **headers}, timeout=30)
        assert response.status_code == 200
        assert response.json() == state and response.headers["ETag"] == etag
    # Leaving out registeredDate (as the original's clients do) changes nothing either.
    body = {key: value for key, value in editable(state).items() if key != "registeredDate"}
    assert requests.put(url, json=body, headers=AS_ADMIN, timeout=30).headers["ETag"] == etag
    assert read(url) == (state, etag)
    assert [event.event_type for event in events_of(app, created["id"])] == ["PATIENT_CREATED"]


def test_a_put_that_changes_nothing_still_checks_its_if_match(server):
    created = create_patient(server)
    url = f"{server}/patients/{created['id']}"
    original, stale_etag = read(url)
    changed = {**editable(original), "name": "Changed"}
    assert requests.put(url, json=changed, headers=AS_ADMIN, timeout=30).status_code == 200
    # The body equals the row now, but the ETag is of the row before: the
    # caller decided on a state that is gone.
    response = requests.put(url, json=changed, headers={**AS_ADMIN, "If-Match": stale_etag}, timeout=30)
    assert response.status_code == 412


def test_concurrent_puts_on_one_etag_change_the_row_once_and_the_last_event_is_the_row(app, server):
    created = create_patient(server)
    url = f"{server}/patients/{created['id']}"
    shuffled = random.Random(19)
    for round_number in range(ROUNDS):
        before, etag = read(url)
        unchanged = editable(before)
        changes = [
            {**unchanged, "name": f"Round {round_number} writer {index}", "address": f"{index} Race Road"}
            for index in range(1 + round_number % (WRITERS - 1))
        ]
        bodies = changes + [unchanged] * (WRITERS - len(changes))
        shuffled.shuffle(bodies)
        results = all_at_once([("PUT", url, body, {"If-Match": etag}) for body in bodies])

        after, etag_after = read(url)
        changed_it = [
            (body, result)
            for body, result in zip(bodies, results, strict=True)
            if result.status == 200 and result.body != before
        ]
        assert len(changed_it) == 1, (round_number, [result.status for result in results])
        winning_body, winner = changed_it[0]
        assert winning_body in changes and editable(winner.body) == winning_body
        assert after == winner.body and etag_after == winner.etag != etag
        for body, result in zip(bodies, results, strict=True):
            if result is winner:
                continue
            assert result.status in (200, 412), (round_number, result.status, result.body)
            if result.status == 200:  # a no-op that read the row before the change: the row as it was
                assert body == unchanged and result.body == before and result.etag == etag

        events = events_of(app, created["id"])
        assert len(events) == 2 + round_number, "one event per round: the change's"
        assert events[-1].event_type == UPDATED and as_body(events[-1]) == editable(after)


def test_identical_puts_count_as_one_update_at_most(app, server):
    created = create_patient(server)
    url = f"{server}/patients/{created['id']}"
    renamed = {**editable(created), "name": "Renamed Once"}
    results = all_at_once([("PUT", url, renamed, {})] * 20)
    # Without If-Match a PUT that read the row before another's change is
    # refused rather than applied over it; one that read it after is a no-op.
    assert {result.status for result in results} <= {200, 412}
    after, etag = read(url)
    assert editable(after) == renamed
    assert all(result.body == after and result.etag == etag for result in results if result.status == 200)
    for _ in range(20):
        assert requests.put(url, json=renamed, headers=AS_ADMIN, timeout=30).headers["ETag"] == etag
    assert [event.event_type for event in events_of(app, created["id"])] == [
        "PATIENT_CREATED",
        "PATIENT_UPDATED",
    ]


def test_a_delete_racing_updates_on_one_etag_is_one_of_them_and_its_event_is_the_last(app, server):
    for round_number in range(10):
        created = create_patient(server, email=f"racer{round_number}@example.com")
        url = f"{server}/patients/{created['id']}"
        before, etag = read(url)
        sent = [("DELETE", url, None, {"If-Match": etag})] + [
            ("PUT", url, {**editable(before), "name": f"Writer {index}"}, {"If-Match": etag})
            for index in range(4)
        ]
        results = all_at_once(sent)
        succeeded = [result for result in results if result.status in (200, 204)]
        assert len(succeeded) == 1, [result.status for result in results]
        assert all(result.status in (404, 412) for result in results if result not in succeeded)
        events = events_of(app, created["id"])
        assert len(events) == 2
        if succeeded[0].status == 204:
            assert requests.get(url, headers=AS_ADMIN, timeout=30).status_code == 404
            assert events[-1].event_type == DELETED
        else:
            after, _ = read(url)
            assert events[-1].event_type == UPDATED and as_body(events[-1]) == editable(after)
