"""The one write path of a patient record: create, update and delete, each
with its billing account, its outbox event (and so its audit entry). The
REST API (resources.py) and the FHIR API (fhir.py) both call these; each
reads and checks its own preconditions (ETag forms differ) first. Errors are
`abort(...)`s in the one error shape; the FHIR API turns them into
OperationOutcomes."""

import logging
import secrets
import uuid

from flask import current_app, request
from flask_smorest import abort
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from pms_common.events import CREATED, DELETED, UPDATED
from pms_common.identity import email_key
from pms_common.models import utcnow

from .account_closures import close_orphan_account
from .billing_client import ask_for_account, next_attempt_at
from .extensions import db
from .models import BILLING_ACTIVE, BILLING_PENDING, Patient
from .outbox import insert_with_event, outbox_row, record_event, wake_the_relay

log = logging.getLogger(__name__)

# The patient row a create inserts, column by column.
PATIENT_COLUMNS = tuple(Patient.__table__.c.keys())
EMAIL_TAKEN = "A patient with this email already exists."
RECORD_NUMBER_TAKEN = "A patient with this medical record number already exists."
# Crockford's base32: no I, L, O or U, so a number read aloud or typed is not misread.
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RECORD_NUMBER_LENGTH = 10
# A drawn number that another patient has is drawn again this often at most;
# with 50 random bits one repeat is already a rarity.
RECORD_NUMBER_DRAWS = 5


def new_record_number():
    """A medical record number for a patient who came without one: MRN- and
    ten random Crockford base32 characters (50 bits). Random rather than a
    counter, so concurrent creates on SQLite and PostgreSQL need no shared
    sequence; the unique index refuses a repeat, and the create draws again."""
    return "MRN-" + "".join(secrets.choice(CROCKFORD) for _ in range(RECORD_NUMBER_LENGTH))


def get_or_404(patient_id):
    patient = db.session.get(Patient, patient_id)
    if patient is None:
        abort(404, message=f"Patient {patient_id} not found.")
    return patient


def email_taken():
    abort(409, message=EMAIL_TAKEN, errors={"json": {"email": [EMAIL_TAKEN]}})


def record_number_taken():
    abort(409, message=RECORD_NUMBER_TAKEN, errors={"json": {"medicalRecordNumber": [RECORD_NUMBER_TAKEN]}})


def is_record_number_conflict(error):
    """Whether a unique violation is the record number's (its index or column
    is named in the driver's message on both databases), not the email's."""
    return "medical_record_number" in str(getattr(error, "orig", error))


def conflict(error):
    """A unique violation as the 409 of the field it is about."""
    if is_record_number_conflict(error):
        record_number_taken()
    email_taken()


def commit_or_conflict(patient_id):
    """Commits; a duplicate email or record number (the unique indexes)
    becomes 409; a row that a concurrent request changed since it was read
    becomes 412, or 404 if that request deleted it."""
    try:
        db.session.commit()
    except IntegrityError as error:
        db.session.rollback()
        conflict(error)
    except (StaleDataError, ObjectDeletedError):
        db.session.rollback()
        if db.session.get(Patient, patient_id) is None:
            abort(404, message=f"Patient {patient_id} not found.")
        abort(
            412,
            message="The patient was changed by another request meanwhile; read it again (for its new ETag) "
            "and retry.",
        )


def lost_connection(error):
    """Whether the database connection broke during the statement: then it
    may have committed without the caller learning it."""
    return isinstance(error, DBAPIError) and error.connection_invalidated


def acting_user():
    return request.headers.get("X-User-Email")


def create_patient(data):
    """Registers a patient from validated fields (model attribute names);
    assigns a record number when `data` has none. Returns the new Patient."""
    config = current_app.config
    billing = current_app.extensions["billing_client"]
    now = utcnow()
    assigned_number = not data.get("medical_record_number")
    patient = Patient(
        id=uuid.uuid4(),
        **{**data, "medical_record_number": data.get("medical_record_number") or new_record_number()},
        email_key=email_key(data["email"]),
        version=1,
        created_at=now,
        updated_at=now,
        billing_attempts=0,
    )
    # Billing first, so the row is written once, with the outcome, in the
    # transaction that records the event; nothing is held open meanwhile.
    patient.billing_account_id = ask_for_account(billing, patient.id, patient.name, patient.email)
    if patient.billing_account_id:
        patient.billing_status = BILLING_ACTIVE
    else:
        patient.billing_status, patient.billing_attempts = BILLING_PENDING, 1
        patient.billing_next_attempt_at = next_attempt_at(0, config["BILLING_RETRY_MAX_SECONDS"])

    for draw in range(1, RECORD_NUMBER_DRAWS + 1):
        try:
            # Not through the ORM session: a new row needs none of its unit of
            # work (what that saves: bench/README.md, "The create path").
            insert_with_event(
                {key: getattr(patient, key) for key in PATIENT_COLUMNS}, outbox_row(patient, CREATED)
            )
            break
        except IntegrityError as error:
            # A number this create drew that another patient has: the same
            # patient (and billing account) with a new number.
            if assigned_number and is_record_number_conflict(error) and draw < RECORD_NUMBER_DRAWS:
                patient.medical_record_number = new_record_number()
                continue
            if patient.billing_account_id:
                close_orphan_account(billing, patient.id, outcome_known=not lost_connection(error))
            conflict(error)
        except Exception as error:
            if patient.billing_account_id:
                close_orphan_account(billing, patient.id, outcome_known=not lost_connection(error))
            raise
    log.info("patient created", extra={"patient_id": str(patient.id), "by": acting_user()})
    return patient


def update_patient(patient, data):
    """Sets the fields of `data` (model attribute names) that differ on a
    patient read in this session. A change that changes nothing writes
    nothing (no event, no version bump): an event of the row as read could
    land after a concurrent change's and leave the stream on a stale state."""
    changes = {key: value for key, value in data.items() if getattr(patient, key) != value}
    if not changes:
        return patient
    # The ORM's UPDATE matches the version read (Patient's version_id_col)
    # and the event commits with it: a writer that lost a race changes
    # nothing and leaves no event (412).
    for key, value in changes.items():
        setattr(patient, key, value)
    patient.email_key = email_key(patient.email)
    record_event(patient, UPDATED)
    commit_or_conflict(patient.id)
    wake_the_relay()
    log.info("patient updated", extra={"patient_id": str(patient.id), "by": acting_user()})
    return patient


def delete_patient(patient):
    """Deletes a patient read in this session; the DELETE, too, matches the
    version read (else 412 and no event). Billing closes the account on the event."""
    patient_id = patient.id
    record_event(patient, DELETED)
    db.session.delete(patient)
    commit_or_conflict(patient_id)
    wake_the_relay()
    log.info("patient deleted", extra={"patient_id": str(patient_id), "by": acting_user()})
