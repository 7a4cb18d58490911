"""Closing billing accounts that no patient has, until billing confirms.

A create asks billing for the account before it writes the patient; when the
write then fails (a duplicate email, a database that fails the insert), the
account must be closed again. That closure is written to account_closures
before it is tried, and the worker retries it with backoff until billing
confirms (the account is closed, or billing has none). The worker carries a
closure out only while no patient row has that id: a write whose outcome the
create did not learn (a lost connection) may have committed.

When the closure cannot be written either (the database is away), the
reconciliation finds the account later. Patient's database is the source of
truth, so the worker makes the check: it pages through billing's ACTIVE
accounts opened at least ORPHAN_ACCOUNT_MIN_AGE_SECONDS ago (a create still
in flight writes its patient within seconds of billing's answer, so an
account that old without a patient will never get one) and records a
closure for each whose patient does not exist, which also catches a deleted
patient's account whose PATIENT_DELETED billing never read."""

import logging
import uuid
from datetime import timedelta

import grpc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from pms_common.db import autocommit_connection, padded_for_in
from pms_common.db_errors import error_fields
from pms_common.models import utcnow
from pms_common.worker import PeerUnavailable

from .billing_client import FIRST_RETRY_SECONDS, next_attempt_at
from .extensions import db
from .models import AccountClosure, Patient

log = logging.getLogger(__name__)
BILLING = "billing"
RECONCILE_PAGE_SIZE = 500
closures = AccountClosure.__table__
_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def record_closures(connection, patient_ids, due_at):
    """Writes a closure for each patient id, due at `due_at`; one already
    written is left as it is."""
    statement = _INSERT[connection.dialect.name](closures).on_conflict_do_nothing(
        index_elements=[closures.c.patient_id]
    )
    now = utcnow()
    connection.execute(
        statement,
        [
            {"patient_id": patient_id, "attempts": 0, "next_attempt_at": due_at, "created_at": now}
            for patient_id in patient_ids
        ],
    )


def confirm_closed(client, patient_id):
    """Asks billing to close the account: True once it is closed or billing
    has none, False when billing failed or was slow."""
    try:
        client.close_account(patient_id)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return True
        log.warning(
            "account without a patient not closed yet; will retry",
            extra={"patient_id": str(patient_id), "grpc_status": exc.code().name},
        )
        return False
    return True


def _in_autocommit(action, patient_id, failure_message):
    """Runs action(connection) in autocommit; True if it did, else logs why."""
    try:
        with autocommit_connection(db) as connection:
            action(connection)
        return True
    except SQLAlchemyError as error:
        log.warning(failure_message, extra={"patient_id": str(patient_id), **error_fields(error)})
        return False


def close_orphan_account(client, patient_id, outcome_known):
    """For a create that got its account and then wrote no patient: records
    the closure, then tries it at once when the write certainly failed
    (`outcome_known`); one whose write may have committed (the connection
    broke during it) is left to the worker, which looks for the patient row
    first."""
    recorded = _in_autocommit(
        lambda connection: record_closures(
            connection, [patient_id], utcnow() + timedelta(seconds=FIRST_RETRY_SECONDS)
        ),
        patient_id,
        "closure of an account without a patient not recorded; the reconciliation will close it",
    )
    if outcome_known and confirm_closed(client, patient_id) and recorded:
        _in_autocommit(
            lambda connection: connection.execute(
                sa.delete(closures).where(closures.c.patient_id == patient_id)
            ),
            patient_id,
            "closed account's closure not removed; the worker will confirm it",
        )


def _forget(patient_id):
    db.session.execute(sa.delete(closures).where(closures.c.patient_id == patient_id))
    db.session.commit()


def _try_again_later(patient_id, attempts, retry_max_seconds):
    db.session.execute(
        sa.update(closures)
        .where(closures.c.patient_id == patient_id)
        .values(attempts=attempts + 1, next_attempt_at=next_attempt_at(attempts, retry_max_seconds))
    )
    db.session.commit()


def close_recorded_accounts(client, retry_max_seconds, limit=50):
    """The worker's pass over the closures that are due: an account whose
    patient exists stays open, the others are closed; one billing did not
    confirm is tried again later, each wait twice the last up to
    retry_max_seconds. Returns (closed, due)."""
    due = db.session.execute(
        sa.select(closures.c.patient_id, closures.c.attempts)
        .where(closures.c.next_attempt_at <= utcnow())
        .order_by(closures.c.next_attempt_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    closed = 0
    for patient_id, attempts in due:
        if db.session.scalar(sa.select(Patient.id).where(Patient.id == patient_id)) is not None:
            log.info(
                "the patient exists after all: its account stays open", extra={"patient_id": str(patient_id)}
            )
            _forget(patient_id)
        elif confirm_closed(client, patient_id):
            log.info("account without a patient closed", extra={"patient_id": str(patient_id)})
            closed += 1
            _forget(patient_id)
        else:
            _try_again_later(patient_id, attempts, retry_max_seconds)
    return closed, len(due)


def patients_missing(patient_ids):
    """The ids among `patient_ids` that no patient row has."""
    if not patient_ids:
        return []
    existing = set(
        db.session.scalars(sa.select(Patient.id).where(Patient.id.in_(padded_for_in(patient_ids))))
    )
    db.session.rollback()
    return [patient_id for patient_id in patient_ids if patient_id not in existing]


class AccountReconciler:
    """Pages through billing's ACTIVE accounts older than min_age_seconds and
    records a closure, due at once, for each whose patient does not exist;
    a full pass, then a pause of pass_interval_seconds."""

    def __init__(self, client, min_age_seconds, pass_interval_seconds, page_size=RECONCILE_PAGE_SIZE):
        self.client = client
        self.min_age_seconds = min_age_seconds
        self.pass_interval_seconds = pass_interval_seconds
        self.page_size = page_size
        self.after = ""

    def step(self):
        """Checks one page; returns the pause before the next: none while the
        pass goes on, the interval after its last page. Raises PeerUnavailable
        while billing does not answer (the page is asked for again)."""
        try:
            page = self.client.list_active_accounts(self.min_age_seconds, self.after, self.page_size)
        except grpc.RpcError as exc:
            raise PeerUnavailable(BILLING, f"billing did not list its accounts: {exc.code().name}") from exc
        orphans = patients_missing([uuid.UUID(patient_id) for patient_id in page])
        if orphans:
            with db.engine.begin() as connection:
                record_closures(connection, orphans, utcnow())
            log.warning("accounts without a patient found; closing them", extra={"accounts": len(orphans)})
        if len(page) == self.page_size:
            self.after = page[-1]
            return 0.0
        self.after = ""
        return self.pass_interval_seconds
