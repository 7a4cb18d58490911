"""/patients: list, read, create, update, delete."""

import logging

import sqlalchemy as sa
from flask import request
from flask.views import MethodView

from pms_common.identity import ADMIN, USER, email_key, require_role
from pms_common.pagination import page_of
from pms_common.web import ApiBlueprint, ErrorSchema
from pms_common.web_app import gateway_location

from .extensions import db
from .models import Patient
from .records import create_patient, delete_patient, get_or_404, update_patient
from .schemas import PatientQuerySchema, PatientSchema, PatientUpdateSchema

log = logging.getLogger(__name__)


# Documented in place of flask-smorest's IF_MATCH, which is required and answers 428 when absent.
OPTIONAL_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "The ETag a read of the patient answered: the change happens only if the patient "
    "is unchanged since (else 412). Leave it out to change the patient whatever its state.",
    "schema": {"type": "string"},
}


class PatientBlueprint(ApiBlueprint):
    """If-Match is optional here (a client of the original never sends it):
    when present it must match, when absent the update goes ahead; the
    document says so, and lists no 428."""

    def _check_precondition(self):
        pass

    def _verify_check_etag(self):
        pass

    def _prepare_etag_doc(self, doc, doc_info, **kwargs):
        doc = super()._prepare_etag_doc(doc, doc_info, **kwargs)
        responses = doc.get("responses", {})
        if responses.pop(428, None) is not None:
            responses[412] = {
                "description": "The patient changed since the ETag in If-Match was read",
                "content": {"application/json": {"schema": ErrorSchema}},
            }
        if "parameters" in doc:
            doc["parameters"] = [
                OPTIONAL_IF_MATCH if parameter == "IF_MATCH" else parameter for parameter in doc["parameters"]
            ]
        return doc


blp = PatientBlueprint(
    "patients",
    __name__,
    url_prefix="/patients",
    description="Patients: registration, details, updates and removal.",
)

SORT_COLUMNS = {
    "name": Patient.name,
    "dateOfBirth": Patient.date_of_birth,
    "registeredDate": Patient.registered_date,
}


def error_response(code, description):
    """Documents an error answer in the one error shape."""
    return blp.alt_response(code, description=description, schema=ErrorSchema)


def signed_in(view):
    """Documents the answers `require_role(USER)` and the gateway give."""
    view = error_response(403, "The caller's role may not read patients")(view)
    return error_response(401, "No token, or an invalid, expired or revoked one")(view)


def admin_only(view):
    """Documents the answers `require_role(ADMIN)` and the gateway give."""
    view = error_response(403, "The caller's role is not ADMIN")(view)
    return error_response(401, "No token, or an invalid, expired or revoked one")(view)


NO_SUCH_PATIENT = "No such patient, or an id that is not a UUID"
LOCATION_HEADER = {
    "description": "The new patient's path through the gateway (/api/patients/{id})",
    "schema": {"type": "string"},
}


@blp.route("")
class Patients(MethodView):
    @require_role(USER)
    @blp.arguments(PatientQuerySchema(), location="query")
    @blp.response(200, PatientSchema(many=True))
    @blp.paginate(page_size=50, max_page_size=500)
    @signed_in
    def get(self, query, pagination_parameters):
        """List patients

        A bare JSON array, one page at a time (`page`, `page_size`); the
        `X-Pagination` header has `total`, `total_pages` and the page links.
        Filter by `name` (substring) or `email` (exact), both case-insensitive
        (an email's look-alikes, such as full-width letters, match too), by
        `dateOfBirth` or by `medicalRecordNumber` (exact).
        """
        filters = []
        if "name" in query:
            pattern = (
                "%"
                + query["name"].lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                + "%"
            )
            filters.append(sa.func.lower(Patient.name).like(pattern, escape="\\"))
        if "email" in query:
            filters.append(Patient.email_key == email_key(query["email"]))
        if "date_of_birth" in query:
            filters.append(Patient.date_of_birth == query["date_of_birth"])
        if "medical_record_number" in query:
            filters.append(Patient.medical_record_number == query["medical_record_number"])
        sort = query["sort"]
        column = SORT_COLUMNS[sort.lstrip("-")]
        order = column.desc() if sort.startswith("-") else column.asc()
        return page_of(
            db.session, sa.select(Patient).where(*filters).order_by(order, Patient.id), pagination_parameters
        )

    @require_role(ADMIN)
    @blp.arguments(PatientSchema())
    @blp.response(201, PatientSchema, headers={"Location": LOCATION_HEADER})
    @error_response(409, "Another patient has this email or medical record number")
    @admin_only
    def post(self, data):
        """Register a patient

        Opens the patient's billing account; if billing does not answer in
        time the patient is still created (`billingStatus: PENDING`) and the
        account is opened by a retry. Publishes `PATIENT_CREATED`.
        """
        patient = create_patient(data)
        return patient, 201, {"Location": gateway_location("patients.PatientById", patient_id=patient.id)}


@blp.route("/<uuid:patient_id>")
class PatientById(MethodView):
    @require_role(USER)
    @blp.etag
    @blp.response(200, PatientSchema)
    @error_response(404, NO_SUCH_PATIENT)
    @signed_in
    def get(self, patient_id):
        """Get a patient

        Answers the patient's `ETag`: sent back as `If-Match`, it makes a
        later update or delete happen only if the patient is unchanged since.
        """
        return get_or_404(patient_id)

    @require_role(ADMIN)
    @blp.etag
    @blp.arguments(PatientUpdateSchema())
    @blp.response(200, PatientSchema)
    @error_response(404, NO_SUCH_PATIENT)
    @error_response(409, "Another patient has this email or medical record number")
    @admin_only
    def put(self, data, patient_id):
        """Update a patient

        `registeredDate` may be left out. With `If-Match`, the update happens
        only if the patient is unchanged since that ETag (else 412); without
        it, the update goes ahead.
        Publishes `PATIENT_UPDATED`; a body that changes nothing writes
        nothing and answers the patient as it is.
        """
        patient = get_or_404(patient_id)
        if request.if_match:
            blp.check_etag(patient, PatientSchema)
        return update_patient(patient, data)

    @require_role(ADMIN)
    @blp.etag
    @blp.response(204)
    @error_response(404, NO_SUCH_PATIENT)
    @admin_only
    def delete(self, patient_id):
        """Delete a patient (ADMIN only)

        With `If-Match`, only if unchanged since that ETag. Publishes
        `PATIENT_DELETED`; billing then closes the account.
        """
        patient = get_or_404(patient_id)
        if request.if_match:
            blp.check_etag(patient, PatientSchema)
        delete_patient(patient)
