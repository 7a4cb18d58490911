"""A create never waits on a broken billing: the account is opened later,
by a retry that lives in the database (so it survives a restart)."""

import time
import uuid

import sqlalchemy as sa

from billing.store import accounts
from patient.billing_client import retry_pending_accounts
from patient.extensions import db
from tests.support import wait_for


def test_billing_down_still_creates_then_a_new_process_opens_the_account(make_app, billing):
    billing.stop()
    first_process = make_app(BILLING_TIMEOUT_SECONDS=0.3)
    started = time.monotonic()
    response = first_process.test_client().post(
        "/patients",
        json={
            "name": "Pending Patient",
            "email": "pending@example.com",
            "address": "1 Road",
            "dateOfBirth": "1970-01-01",
            "registeredDate": "2024-01-01",
        },
    )
    assert response.status_code == 201
    assert time.monotonic() - started < 2.0
    created = response.get_json()
    assert created["billingStatus"] == "PENDING" and created["billingAccountId"] is None

    billing.start()
    # A restarted patient service (a new app on the same database) finds the pending row.
    second_process = make_app(BILLING_RETRY_MAX_SECONDS=0.0)
    with second_process.app_context():
        client = second_process.extensions["billing_client"]
        # Due one second after the failed attempt (the first backoff step).
        wait_for(
            lambda: retry_pending_accounts(client, retry_max_seconds=0.0) == (1, 1),
            timeout=5,
            interval=0.2,
            message="the pending account to be opened",
        )
        db.session.remove()
    patient = second_process.test_client().get(f"/patients/{created['id']}").get_json()
    assert patient["billingStatus"] == "ACTIVE"
    assert patient["billingAccountId"] == billing.store.get_account(uuid.UUID(created["id"])).account_id


def test_failed_attempts_back_off(make_app, billing):
    billing.stop()
    app = make_app(BILLING_TIMEOUT_SECONDS=0.2)
    client = app.test_client()
    created = client.post(
        "/patients",
        json={
            "name": "Backoff",
            "email": "backoff@example.com",
            "address": "1 Road",
            "dateOfBirth": "1970-01-01",
            "registeredDate": "2024-01-01",
        },
    ).get_json()
    with app.app_context():
        billing_client = app.extensions["billing_client"]
        # The first failure scheduled the next attempt in the future: nothing is due yet.
        assert retry_pending_accounts(billing_client, retry_max_seconds=30.0) == (0, 0)
    assert client.get(f"/patients/{created['id']}").get_json()["billingStatus"] == "PENDING"


def test_billing_is_asked_once_per_create_and_is_idempotent(app, client, billing):
    created = client.post(
        "/patients",
        json={
            "name": "Once",
            "email": "once@example.com",
            "address": "1 Road",
            "dateOfBirth": "1970-01-01",
            "registeredDate": "2024-01-01",
        },
    ).get_json()
    account = billing.store.get_account(uuid.UUID(created["id"]))
    assert account.account_id == created["billingAccountId"]
    # A retry that races the first call gets the same account, never a second one.
    with app.app_context():
        again = app.extensions["billing_client"].open_account(created["id"], "Once", "once@example.com")
    assert again == created["billingAccountId"]


def test_a_create_refused_as_a_duplicate_closes_the_account_it_opened(client, billing):
    patient = {
        "name": "First",
        "email": "Same@Example.com",
        "address": "1 Road",
        "dateOfBirth": "1970-01-01",
        "registeredDate": "2024-01-01",
    }
    first = client.post("/patients", json=patient)
    assert first.status_code == 201
    second = client.post("/patients", json={**patient, "name": "Second", "email": "same@example.com"})
    assert second.status_code == 409
    with billing.store.engine.connect() as connection:
        statuses = dict(
            connection.execute(
                sa.select(accounts.c.name, accounts.c.status).where(
                    accounts.c.email.in_(["Same@Example.com", "same@example.com"])
                )
            ).all()
        )
    # Billing saw both creates; only the patient that exists keeps an open account.
    assert statuses == {"First": "ACTIVE", "Second": "CLOSED"}
    assert client.get(f"/patients/{first.get_json()['id']}").get_json()["billingStatus"] == "ACTIVE"
