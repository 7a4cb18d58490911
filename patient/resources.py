"""/patients: list, read, create, update, delete."""
import logging
import uuid

import sqlalchemy as sa
from flask import current_app, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from pms_common.events import CREATED, DELETED, UPDATED
from pms_common.pagination import page_of

from .billing import ask_for_account, close_orphan_account, next_attempt_at
from .extensions import db
from .models import BILLING_ACTIVE, BILLING_PENDING, Patient, utcnow
from .outbox import insert_with_event, outbox_row, record_event
from .schemas import PatientQuerySchema, PatientSchema, PatientUpdateSchema

log = logging.getLogger(__name__)


class PatientBlueprint(Blueprint):
    """If-Match is optional here (a client of the original never sends it):
    when present it must match, when absent the update goes ahead."""

    def _check_precondition(self):
        pass

    def _verify_check_etag(self):
        pass


blp = PatientBlueprint("patients", __name__, url_prefix="/patients",
                       description="Patients: registration, details, updates and removal.")

SORT_COLUMNS = {"name": Patient.name, "dateOfBirth": Patient.date_of_birth,
                "registeredDate": Patient.registered_date}
EMAIL_TAKEN = "A patient with this email already exists."


def get_or_404(patient_id):
    patient = db.session.get(Patient, patient_id)
    if patient is None:
        abort(404, message=f"Patient {patient_id} not found.")
    return patient


def email_taken():
    abort(409, message=EMAIL_TAKEN, errors={"json": {"email": [EMAIL_TAKEN]}})


def commit_or_conflict(patient_id):
    """Commits; a duplicate email (the unique index) becomes 409; a row that
    a concurrent request changed since it was read becomes 412, or 404 if
    that request deleted it."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        email_taken()
    except (StaleDataError, ObjectDeletedError):
        db.session.rollback()
        if db.session.get(Patient, patient_id) is None:
            abort(404, message=f"Patient {patient_id} not found.")
        abort(412, message="The patient was changed meanwhile; read it again and retry.")


def acting_user():
    return request.headers.get("X-User-Email")


@blp.route("")
class Patients(MethodView):
    @blp.arguments(PatientQuerySchema(), location="query")
    @blp.response(200, PatientSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=500)
    def get(self, query, pagination_parameters):
        """List patients

        A bare JSON array, one page at a time (`page`, `page_size`); the
        `X-Pagination` header has `total`, `total_pages` and the page links.
        Filter by `name` (substring) or `email` (exact), both case-insensitive.
        """
        filters = []
        if "name" in query:
            pattern = "%" + query["name"].lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            filters.append(sa.func.lower(Patient.name).like(pattern, escape="\\"))
        if "email" in query:
            filters.append(Patient.email_key == query["email"].lower())
        sort = query["sort"]
        column = SORT_COLUMNS[sort.lstrip("-")]
        order = column.desc() if sort.startswith("-") else column.asc()
        return page_of(db.session, sa.select(Patient).where(*filters).order_by(order, Patient.id),
                       pagination_parameters)

    @blp.arguments(PatientSchema())
    @blp.response(201, PatientSchema)
    @blp.alt_response(409, description="Another patient has this email")
    def post(self, data):
        """Register a patient

        Opens the patient's billing account; if billing does not answer in
        time the patient is still created (`billingStatus: PENDING`) and the
        account is opened by a retry. Publishes `PATIENT_CREATED`.
        """
        config = current_app.config
        billing = current_app.extensions["billing_client"]
        now = utcnow()
        patient = Patient(id=uuid.uuid4(), **data, email_key=data["email"].lower(), version=1,
                          created_at=now, updated_at=now, billing_attempts=0)
        # Billing first, so the row is written once, with the outcome, in the
        # transaction that records the event; nothing is held open meanwhile.
        patient.billing_account_id = ask_for_account(billing, patient.id, patient.name, patient.email)
        if patient.billing_account_id:
            patient.billing_status = BILLING_ACTIVE
        else:
            patient.billing_status, patient.billing_attempts = BILLING_PENDING, 1
            patient.billing_next_attempt_at = next_attempt_at(0, config["BILLING_RETRY_MAX_SECONDS"])

        try:
            # Not through the ORM session: a new row needs none of its unit of
            # work (a third of a create's CPU).
            insert_with_event({key: getattr(patient, key) for key in Patient.__table__.c.keys()},
                              outbox_row(patient, CREATED))
        except Exception as error:
            if patient.billing_account_id:
                close_orphan_account(billing, patient.id)
            if isinstance(error, IntegrityError):
                email_taken()
            raise
        log.info("patient created", extra={"patient_id": str(patient.id), "by": acting_user()})
        return patient, 201, {"Location": url_for("patients.PatientById", patient_id=patient.id)}


@blp.route("/<uuid:patient_id>")
class PatientById(MethodView):
    @blp.etag
    @blp.response(200, PatientSchema)
    @blp.alt_response(404, description="No such patient")
    def get(self, patient_id):
        """Get a patient (with an ETag for a later conditional update)"""
        return get_or_404(patient_id)

    @blp.etag
    @blp.arguments(PatientUpdateSchema())
    @blp.response(200, PatientSchema)
    @blp.alt_response(404, description="No such patient")
    @blp.alt_response(409, description="Another patient has this email")
    def put(self, data, patient_id):
        """Update a patient

        `registeredDate` may be left out. With `If-Match`, the update happens
        only if the patient is unchanged since that ETag (else 412).
        Publishes `PATIENT_UPDATED`.
        """
        patient = get_or_404(patient_id)
        if request.if_match:
            blp.check_etag(patient, PatientSchema)
        for key, value in data.items():
            setattr(patient, key, value)
        patient.email_key = patient.email.lower()
        record_event(patient, UPDATED)
        commit_or_conflict(patient_id)
        log.info("patient updated", extra={"patient_id": str(patient_id), "by": acting_user()})
        return patient

    @blp.etag
    @blp.response(204)
    @blp.alt_response(404, description="No such patient")
    def delete(self, patient_id):
        """Delete a patient (ADMIN only, enforced at the gateway)

        With `If-Match`, only if unchanged since that ETag. Publishes
        `PATIENT_DELETED`; billing then closes the account.
        """
        patient = get_or_404(patient_id)
        if request.if_match:
            blp.check_etag(patient, PatientSchema)
        record_event(patient, DELETED)
        db.session.delete(patient)
        commit_or_conflict(patient_id)
        log.info("patient deleted", extra={"patient_id": str(patient_id), "by": acting_user()})
