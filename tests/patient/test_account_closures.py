"""An account a refused create opened is closed for sure: the closure is
written before it is tried, and the worker retries it until billing confirms;
what nobody could write down, the reconciliation finds (an ACTIVE account old
enough to have its patient, without one). A real billing server, on SQLite
and PostgreSQL."""

import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa

from billing.store import accounts
from patient.account_closures import AccountReconciler, close_recorded_accounts, record_closures
from patient.config import Config
from patient.extensions import db
from patient.models import AccountClosure, Patient
from patient.worker import BILLING_IDLE_SWEEP_SECONDS, BILLING_SWEEP_SECONDS, retry_billing, run
from pms_common.config import ConfigError
from pms_common.identity import email_key
from pms_common.kafka import ensure_topics
from pms_common.models import utcnow
from pms_common.worker import PeerUnavailable
from tests.patient.conftest import VALID
from tests.support import wait_for

AN_HOUR = 3600
MIN_AGE = 600


def status_of(billing, patient_id):
    account = billing.store.get_account(uuid.UUID(str(patient_id)))
    return account.status if account else None


def account_where(billing, column, value):
    with billing.store.engine.connect() as connection:
        return connection.execute(sa.select(accounts).where(accounts.c[column] == value)).first()


def closures(app):
    """{patient_id: attempts} of the closures still recorded."""
    with app.app_context():
        recorded = dict(
            db.session.execute(sa.select(AccountClosure.patient_id, AccountClosure.attempts)).all()
        )
        db.session.remove()
    return recorded


def opened_ago(billing, patient_ids, seconds):
    with billing.store.engine.connect() as connection:
        connection.execute(
            sa.update(accounts)
            .where(accounts.c.patient_id.in_([uuid.UUID(str(patient_id)) for patient_id in patient_ids]))
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


def open_orphan_account(app):
    """An account billing opened for a patient that was never written."""
    patient_id = uuid.uuid4()
    app.extensions["billing_client"].open_account(patient_id, "Nobody", f"{patient_id.hex}@example.com")
    return patient_id


class HeldPatientInsert:
    """A transaction that inserted a patient with this email and has not
    committed: a create with the same email waits for it, and is refused as a
    duplicate once it commits."""

    def __init__(self, app, email):
        with app.app_context():
            self.connection = db.engine.connect()
        self.transaction = self.connection.begin()
        now = utcnow()
        self.connection.execute(
            sa.insert(Patient).values(
                id=uuid.uuid4(),
                name="First",
                email=email,
                email_key=email_key(email),
                address=VALID["address"],
                date_of_birth=utcnow().date() - timedelta(days=365 * 30),
                registered_date=now.date(),
                billing_status="ACTIVE",
                billing_attempts=0,
                created_at=now,
                updated_at=now,
                version=1,
            )
        )

    def commit(self):
        self.transaction.commit()
        self.connection.close()


@contextmanager
def store_locked(store):
    """Billing's SQLite store with its write lock held by someone else: every
    write billing tries waits, then fails (the store is away for writes)."""
    connection = sqlite3.connect(store.engine.url.database, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


@contextmanager
def running(loop, app):
    """The worker's loop(app, stop) in a thread, stopped on exit."""
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(app, stop))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()


def test_a_refused_creates_account_is_closed_by_the_worker_after_billings_store_failed(
    make_app, app, billing
):
    email = "twice@example.com"
    held = HeldPatientInsert(app, email)
    # The worker runs apart from the app that refuses the create, as another process does.
    with running(retry_billing, make_app(BILLING_RETRY_MAX_SECONDS=1.0)), ThreadPoolExecutor(1) as pool:
        refused = pool.submit(lambda: app.test_client().post("/patients", json={**VALID, "email": email}))
        # Billing opened the account; the create now waits to insert its patient.
        account = wait_for(lambda: account_where(billing, "email", email), timeout=10, message="the account")
        with store_locked(billing.store):
            held.commit()
            response = refused.result(timeout=30)
            assert response.status_code == 409, response.get_json()
            # The close tried at once failed: recorded, not done.
            assert status_of(billing, account.patient_id) == "ACTIVE"
            assert set(closures(app)) == {account.patient_id}
            wait_for(
                lambda: closures(app).get(account.patient_id, 0) >= 1,
                timeout=20,
                message="the worker's retry to fail too",
            )
            assert status_of(billing, account.patient_id) == "ACTIVE"
        wait_for(
            lambda: status_of(billing, account.patient_id) == "CLOSED" and not closures(app),
            timeout=20,
            message="the account closed and its closure done",
        )
    # The patient that has the email keeps it; nothing else was written.
    assert [patient["name"] for patient in app.test_client().get("/patients").get_json()] == ["First"]


def test_a_closure_that_cannot_be_recorded_is_still_tried_at_once(app, client, billing):
    assert client.post("/patients", json=VALID).status_code == 201
    with app.app_context():
        with db.engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE account_closures RENAME TO account_closures_away"))
        try:
            response = client.post("/patients", json={**VALID, "name": "Second"})
        finally:
            with db.engine.begin() as connection:
                connection.execute(sa.text("ALTER TABLE account_closures_away RENAME TO account_closures"))
    assert response.status_code == 409
    # Billing opened the refused create's account; it was closed though nothing could be written down.
    assert account_where(billing, "name", "Second").status == "CLOSED"
    assert closures(app) == {}


def test_a_closure_is_carried_out_only_while_no_patient_has_the_id(app, billing):
    client = app.test_client()
    existing = client.post("/patients", json=VALID).get_json()["id"]
    orphan = open_orphan_account(app)
    unknown = uuid.uuid4()  # billing has no account for it: NOT_FOUND confirms the closure
    with app.app_context():
        with db.engine.begin() as connection:
            # As a create whose connection broke after its write committed would have.
            record_closures(connection, [uuid.UUID(existing), orphan, unknown], utcnow())
        assert close_recorded_accounts(app.extensions["billing_client"], 1.0) == (2, 3)
        db.session.remove()
    assert closures(app) == {}
    assert status_of(billing, existing) == "ACTIVE"
    assert status_of(billing, orphan) == "CLOSED"
    assert client.get(f"/patients/{existing}").get_json()["billingStatus"] == "ACTIVE"


def test_the_reconciliation_closes_old_accounts_without_a_patient_and_leaves_young_ones_alone(app, billing):
    client = app.test_client()
    kept = client.post("/patients", json=VALID).get_json()["id"]
    deleted = client.post("/patients", json={**VALID, "email": "gone@example.com"}).get_json()["id"]
    assert client.delete(f"/patients/{deleted}").status_code == 204  # no consumer here: still ACTIVE
    old_orphan, young_orphan = open_orphan_account(app), open_orphan_account(app)
    opened_ago(billing, [kept, deleted, old_orphan], AN_HOUR)

    reconciler = AccountReconciler(app.extensions["billing_client"], MIN_AGE, 123.0, page_size=2)
    with app.app_context():
        # Three old ACTIVE accounts: a full page, then the last one.
        assert [reconciler.step(), reconciler.step()] == [0.0, 123.0]
        db.session.remove()
    assert set(closures(app)) == {uuid.UUID(deleted), old_orphan}
    with app.app_context():
        assert close_recorded_accounts(app.extensions["billing_client"], 1.0) == (2, 2)
        assert reconciler.step() == 123.0  # the next pass finds nothing more to close
        db.session.remove()
    assert closures(app) == {}
    assert {
        name: status_of(billing, patient_id)
        for name, patient_id in [
            ("kept", kept),
            ("deleted", deleted),
            ("old orphan", old_orphan),
            ("young orphan", young_orphan),
        ]
    } == {"kept": "ACTIVE", "deleted": "CLOSED", "old orphan": "CLOSED", "young orphan": "ACTIVE"}


def test_the_reconciliation_waits_for_billing(app, billing):
    billing.stop()
    reconciler = AccountReconciler(app.extensions["billing_client"], MIN_AGE, 123.0)
    with app.app_context(), pytest.raises(PeerUnavailable) as waiting:
        reconciler.step()
    assert waiting.value.peer == "billing"


def test_the_worker_closes_an_old_orphan_account_by_itself(make_app, billing, broker):
    topic = f"patient-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic])
    app = make_app(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, EVENTS_TOPIC=topic)
    orphan = open_orphan_account(app)
    opened_ago(billing, [orphan], AN_HOUR)
    with running(run, app):
        wait_for(lambda: status_of(billing, orphan) == "CLOSED", timeout=20, message="the orphan closed")
    assert closures(app) == {}


@pytest.mark.parametrize(
    "setting, value", [("ORPHAN_ACCOUNT_MIN_AGE_SECONDS", 59), ("RECONCILE_INTERVAL_SECONDS", 0)]
)
def test_the_reconciliations_settings_are_checked(setting, value):
    with pytest.raises(ConfigError, match=setting):
        Config(**{setting: value}).check()


def test_a_worker_with_nothing_due_sweeps_seldom_and_still_does_what_falls_due(app, billing):
    """An idle worker does not ask its database every second; a closure
    written meanwhile is still done."""
    with app.app_context():
        engine = db.engine
    sweeps = []

    def count_sweeps(_connection, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT") and "FROM account_closures" in statement:
            sweeps.append(time.monotonic())

    sa.event.listen(engine, "before_cursor_execute", count_sweeps)
    try:
        with running(retry_billing, app):
            time.sleep(3 * BILLING_SWEEP_SECONDS)
            idle_sweeps = len(sweeps)
            with engine.begin() as connection:
                record_closures(connection, [uuid.uuid4()], due_at=utcnow())
            wait_for(
                lambda: not closures(app), timeout=2 * BILLING_IDLE_SWEEP_SECONDS, message="the closure done"
            )
    finally:
        sa.event.remove(engine, "before_cursor_execute", count_sweeps)
    assert idle_sweeps <= 1  # the one at the start; a sweep a second would have made three
