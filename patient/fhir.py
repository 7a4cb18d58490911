"""/fhir: the patient record as a FHIR R4 Patient resource (read, vread of
the current version, search, create, update, delete) and the server's
CapabilityStatement. The same rows and the same write path as the REST API
(patient.records): one patient, two representations.

Every answer is application/fhir+json; every error an OperationOutcome,
whatever raised it (the role check, the arguments parser, the write path,
the database handlers): `outcome_of_errors` rewrites the one error shape
of the service on the way out."""

import json
import re
import uuid
from datetime import date
from urllib.parse import urlencode

import marshmallow as ma
import sqlalchemy as sa
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort

from pms_common.identity import ADMIN, USER, email_key, require_role
from pms_common.web import ApiBlueprint, ErrorSchema

from .extensions import db
from .fhir_schemas import (
    DATE_PREFIXES,
    FHIR_JSON,
    FHIR_VERSION,
    Bundle,
    CapabilityStatement,
    FhirPatient,
    OperationOutcome,
    PatientSearch,
)
from .models import Patient
from .records import create_patient, delete_patient, update_patient
from .schemas import GENDERS, PatientSchema, PatientUpdateSchema

# The system URI of this service's medical record numbers, and the URL of
# its registration-date extension.
CANONICAL_BASE = "https://patient-management-system.example/fhir"
RECORD_NUMBER_SYSTEM = f"{CANONICAL_BASE}/sid/medical-record-number"
REGISTRATION_DATE_URL = f"{CANONICAL_BASE}/StructureDefinition/registration-date"
ROUTE_PREFIX = "/fhir"

# A REST field, or a FHIR search parameter, as the Patient element it is about.
ELEMENT_OF_FIELD = {
    "name": "Patient.name",
    "email": "Patient.telecom",
    "phone": "Patient.telecom",
    "address": "Patient.address",
    "dateOfBirth": "Patient.birthDate",
    "registeredDate": "Patient.extension",
    "gender": "Patient.gender",
    "medicalRecordNumber": "Patient.identifier",
}
ELEMENT_OF_PARAMETER = {
    "name": "Patient.name",
    "name:contains": "Patient.name",
    "name:exact": "Patient.name",
    "family": "Patient.name.family",
    "given": "Patient.name.given",
    "birthdate": "Patient.birthDate",
    "email": "Patient.telecom",
    "identifier": "Patient.identifier",
    "gender": "Patient.gender",
    "_id": "Patient.id",
}
ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "duplicate",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    428: "required",
    429: "throttled",
    503: "transient",
}
WEAK_ETAG = re.compile(r'^(?:W/)?"(\d+)"$')
# The errors any FHIR operation may answer, besides its own.
OUTCOME_RESPONSES = {
    400: "The path or the body is malformed",
    401: "No token, or an invalid, expired or revoked one",
    403: "The caller's role may not do this",
}
# Answered by the gateway before it has read the path, so it cannot tell a
# FHIR request from another one: in the plain JSON error shape.
GATEWAY_JSON_RESPONSES = {431: "The request line or headers exceed the gateway's limit (60 KiB)"}


class FhirBlueprint(ApiBlueprint):
    """Documents every error answer, those the kit documents by itself
    included (flask-smorest's "default", the 415 of a JSON body), as an
    OperationOutcome in application/fhir+json, as every error here is."""

    def _prepare_response_doc(self, doc, doc_info, **kwargs):
        doc = super()._prepare_response_doc(doc, doc_info, **kwargs)
        responses = doc.get("responses", {})
        for status, response in responses.items():
            if str(status) in {str(code) for code in GATEWAY_JSON_RESPONSES}:
                continue
            if str(status) == "default" or int(status) >= 400:
                described = isinstance(response, dict) and response.get("description")
                responses[status] = {
                    "description": described or "Any other error",
                    "content": {FHIR_JSON: {"schema": OperationOutcome}},
                }
        return doc


blp = FhirBlueprint(
    "fhir",
    __name__,
    url_prefix=ROUTE_PREFIX,
    description="FHIR R4: patients as Patient resources (application/fhir+json); "
    "every error is an OperationOutcome.",
)


def with_errors(*codes):
    """Documents error answers as OperationOutcomes: the operation's own
    (code, description) pairs and those any operation may answer."""

    def document(view):
        for code, description in {**OUTCOME_RESPONSES, **dict(codes)}.items():
            view = blp.alt_response(
                code, description=description, schema=OperationOutcome, content_type=FHIR_JSON
            )(view)
        for code, description in GATEWAY_JSON_RESPONSES.items():
            view = blp.alt_response(code, description=description, schema=ErrorSchema)(view)
        return view

    return document


# --- errors ------------------------------------------------------------------


def fhir_error(status, diagnostics, expression=None):
    """Aborts with an error the outcome rewrite turns into an issue about `expression`."""
    errors = {"fhir": {expression: [diagnostics]}} if expression else None
    abort(status, message=diagnostics, errors=errors)


def _path(parts):
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _leaves(errors, parts=()):
    """(path, message) of every message in marshmallow-shaped errors."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            yield from _leaves(value, (*parts, int(key) if str(key).isdigit() else key))
    elif isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        for message in errors:
            yield parts, message
    elif isinstance(errors, list):
        for index, value in enumerate(errors):
            yield from _leaves(value, (*parts, index))
    else:
        yield parts, str(errors)


def issues_of(status, body):
    """The OperationOutcome issues of an error in the service's one shape
    (code, status, message, errors)."""
    code = ISSUE_CODE.get(status, "exception" if status >= 500 else "processing")
    severity = "fatal" if status >= 500 else "error"
    issues = []
    for location, fields in (body.get("errors") or {}).items():
        for parts, message in _leaves(fields):
            expression = None
            if location == "fhir":
                expression = parts[0] if parts else None
            elif location == "json" and parts:
                head = parts[0]
                if head in ELEMENT_OF_FIELD:
                    expression = ELEMENT_OF_FIELD[head] + _path(parts[1:])
                elif head != "_schema":
                    expression = "Patient" + _path(parts)
            elif location == "query" and parts:
                expression = ELEMENT_OF_PARAMETER.get(parts[0])
                message = f"Search parameter {parts[0]}: {message}"
            issue = {"severity": severity, "code": code, "diagnostics": message}
            if expression:
                issue["expression"] = [expression]
            issues.append(issue)
    if not issues:
        issues.append(
            {"severity": severity, "code": code, "diagnostics": body.get("message") or body.get("status")}
        )
    return issues


@blp.after_app_request
def outcome_of_errors(response):
    """Under /fhir: an error answer becomes an OperationOutcome, and every
    JSON answer is application/fhir+json."""
    if not request.path.startswith(ROUTE_PREFIX + "/") or not response.is_json:
        return response
    if response.status_code >= 400:
        body = response.get_json(silent=True)
        if not (isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"):
            body = body if isinstance(body, dict) else {}
            response.set_data(
                json.dumps(
                    {"resourceType": "OperationOutcome", "issue": issues_of(response.status_code, body)}
                )
            )
    response.headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
    return response


@blp.before_request
def fhir_content_only():
    """A body must be FHIR JSON (or plain JSON): anything else is 415."""
    if request.method in ("POST", "PUT") and request.mimetype not in (FHIR_JSON, "application/json"):
        fhir_error(
            415, f"The body must be {FHIR_JSON} (or application/json), not {request.mimetype or 'none'}."
        )


# --- representation --------------------------------------------------------


def instant(moment):
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human_name(name):
    """The name as FHIR's HumanName: text always; family and given only when
    the two can be told apart (two words, or "Family, Given names")."""
    element = {"use": "official", "text": name}
    family, comma, given = name.partition(",")
    if comma and family.strip() and given.split():
        element.update(family=family.strip(), given=given.split())
        return element
    words = name.split()
    if len(words) == 2:
        element.update(family=words[1], given=[words[0]])
    return element


def resource_of(patient):
    telecom = [{"system": "email", "value": patient.email}]
    if patient.phone:
        telecom.append({"system": "phone", "value": patient.phone})
    resource = {
        "resourceType": "Patient",
        "id": str(patient.id),
        "meta": {"versionId": str(patient.version), "lastUpdated": instant(patient.updated_at)},
        "extension": [{"url": REGISTRATION_DATE_URL, "valueDate": patient.registered_date.isoformat()}],
    }
    if patient.medical_record_number:
        resource["identifier"] = [
            {
                "use": "usual",
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
                    "text": "Medical record number",
                },
                "system": RECORD_NUMBER_SYSTEM,
                "value": patient.medical_record_number,
            }
        ]
    resource["name"] = [human_name(patient.name)]
    resource["telecom"] = telecom
    if patient.gender:
        resource["gender"] = patient.gender
    resource["birthDate"] = patient.date_of_birth.isoformat()
    resource["address"] = [{"use": "home", "text": patient.address}]
    return resource


def version_headers(patient):
    return {
        "ETag": f'W/"{patient.version}"',
        "Last-Modified": patient.updated_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }


def gateway_base_path():
    """This API's base path as a client of the gateway sees it (/api/fhir)."""
    return current_app.config["GATEWAY_PREFIX"] + ROUTE_PREFIX


def base_url():
    """This API's base URL as the client sees it (through the gateway)."""
    return request.host_url.rstrip("/") + gateway_base_path()


# --- writes -----------------------------------------------------------------


def first_of(resource, element, keep=lambda item: True):
    return next((item for item in resource.get(element) or [] if keep(item)), None)


def fields_of(resource):
    """A Patient as the REST API's fields (only those the resource has)."""
    fields = {}
    name = first_of(resource, "name", lambda item: item.get("use") == "official") or first_of(
        resource, "name"
    )
    if name is not None:
        text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
        if not text:
            fhir_error(422, "A name needs text, or family and given names.", "Patient.name[0]")
        fields["name"] = text
    for system, field in (("email", "email"), ("phone", "phone")):
        contact = first_of(resource, "telecom", lambda item, system=system: item.get("system") == system)
        if contact is not None:
            if not contact.get("value"):
                fhir_error(422, f"The {system} contact point has no value.", "Patient.telecom")
            fields[field] = contact["value"]
    address = first_of(resource, "address")
    if address is not None:
        parts = [
            *address.get("line", []),
            address.get("city"),
            address.get("state"),
            address.get("postalCode"),
            address.get("country"),
        ]
        fields["address"] = address.get("text") or ", ".join(part for part in parts if part)
    if "birthDate" in resource:
        if len(resource["birthDate"]) != len("YYYY-MM-DD"):
            fhir_error(422, "The birth date must be a full date (YYYY-MM-DD).", "Patient.birthDate")
        fields["dateOfBirth"] = resource["birthDate"]
    if "gender" in resource:
        fields["gender"] = resource["gender"]
    registered = first_of(resource, "extension", lambda item: item.get("url") == REGISTRATION_DATE_URL)
    if registered is not None:
        if len(registered.get("valueDate", "")) != len("YYYY-MM-DD"):
            fhir_error(
                422, "The registration date must be a full date (valueDate, YYYY-MM-DD).", "Patient.extension"
            )
        fields["registeredDate"] = registered["valueDate"]
    for index, identifier in enumerate(resource.get("identifier") or []):
        if identifier.get("system") != RECORD_NUMBER_SYSTEM:
            fhir_error(
                422,
                "Only the medical record number is kept: an identifier's system must be "
                f"{RECORD_NUMBER_SYSTEM}.",
                f"Patient.identifier[{index}].system",
            )
        if not identifier.get("value"):
            fhir_error(422, "The medical record number has no value.", f"Patient.identifier[{index}].value")
        fields["medicalRecordNumber"] = identifier["value"]
    return fields


def required_elements(fields):
    for field, element, what in (
        ("name", "Patient.name", "a name"),
        ("email", "Patient.telecom", "an email contact point (telecom with system email)"),
        ("address", "Patient.address", "an address"),
        ("dateOfBirth", "Patient.birthDate", "a birth date"),
    ):
        if field not in fields:
            fhir_error(422, f"A patient needs {what}.", element)


def validated(schema, fields):
    """The REST schema's check of the fields, its errors named by element."""
    try:
        return schema.load(fields)
    except ma.ValidationError as error:
        abort(422, message="The patient is not valid.", errors={"json": error.messages})


def checked_if_match(patient):
    """If-Match (W/"n", "n" or *) must name the current version; absent, the write goes ahead."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return
    found = WEAK_ETAG.match(header.strip())
    if found is None or int(found.group(1)) != patient.version:
        fhir_error(
            412,
            f'If-Match {header} does not match the patient\'s current version W/"{patient.version}"; '
            "read it again and retry.",
            "Patient.meta.versionId",
        )


def patient_or_404(patient_id):
    try:
        key = uuid.UUID(patient_id)
    except ValueError:
        fhir_error(404, f"Patient/{patient_id} is not known (ids are UUIDs).", "Patient.id")
    patient = db.session.get(Patient, key)
    if patient is None:
        fhir_error(404, f"Patient/{patient_id} is not known.", "Patient.id")
    return patient


# --- search -----------------------------------------------------------------


def like_pattern(text):
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def word_starts(text):
    """The name has a word starting with `text` (case-insensitive)."""
    pattern = like_pattern(text)
    lowered = sa.func.lower(Patient.name)
    return sa.or_(lowered.like(pattern + "%", escape="\\"), lowered.like("% " + pattern + "%", escape="\\"))


def date_range(value):
    """A FHIR date search value as (prefix, first day, last day)."""
    prefix, text = ("eq", value) if value[:2].isdigit() else (value[:2], value[2:])
    if prefix not in DATE_PREFIXES:
        fhir_error(
            400,
            f"Unknown date prefix {prefix!r}; use one of {', '.join(DATE_PREFIXES)}.",
            "Patient.birthDate",
        )
    try:
        if len(text) == 4:
            start, end = date(int(text), 1, 1), date(int(text), 12, 31)
        elif len(text) == 7:
            start = date(int(text[:4]), int(text[5:7]), 1)
            following = date(start.year + start.month // 12, start.month % 12 + 1, 1)
            end = date.fromordinal(following.toordinal() - 1)
        else:
            start = end = date.fromisoformat(text)
    except ValueError:
        fhir_error(400, f"birthdate {value!r} is not YYYY, YYYY-MM or YYYY-MM-DD.", "Patient.birthDate")
    return prefix, start, end


def birthdate_filter(value):
    prefix, start, end = date_range(value)
    column = Patient.date_of_birth
    return {
        "eq": sa.and_(column >= start, column <= end),
        "ne": sa.or_(column < start, column > end),
        "lt": column < start,
        "eb": column < start,
        "gt": column > end,
        "sa": column > end,
        "le": column <= end,
        "ge": column >= start,
    }[prefix]


def search_filters(query):
    filters = []
    if "name" in query:
        filters.append(word_starts(query["name"]))
    if "name_contains" in query:
        filters.append(
            sa.func.lower(Patient.name).like("%" + like_pattern(query["name_contains"]) + "%", escape="\\")
        )
    if "name_exact" in query:
        filters.append(Patient.name == query["name_exact"])
    if "family" in query:
        filters.append(
            sa.func.lower(Patient.name).like("% " + like_pattern(query["family"]) + "%", escape="\\")
        )
    if "given" in query:
        filters.append(sa.func.lower(Patient.name).like(like_pattern(query["given"]) + "%", escape="\\"))
    for value in query.get("birthdate", []):
        filters.append(birthdate_filter(value))
    if "email" in query:
        filters.append(Patient.email_key.in_([email_key(value) for value in query["email"].split(",")]))
    if "identifier" in query:
        numbers = []
        for value in query["identifier"].split(","):
            system, bar, number = value.rpartition("|")
            if not bar or system in ("", RECORD_NUMBER_SYSTEM):
                numbers.append(number)
        filters.append(Patient.medical_record_number.in_(numbers))
    if "gender" in query:
        genders = query["gender"].split(",")
        unknown = [gender for gender in genders if gender not in GENDERS]
        if unknown:
            fhir_error(
                400, f"Unknown gender {unknown[0]!r}; use one of {', '.join(GENDERS)}.", "Patient.gender"
            )
        filters.append(Patient.gender.in_(genders))
    if "_id" in query:
        ids = []
        for value in query["_id"].split(","):
            try:
                ids.append(uuid.UUID(value))
            except ValueError:
                continue  # an id this server never gives matches nothing
        filters.append(Patient.id.in_(ids))
    return filters


SORT_COLUMNS = {
    "name": Patient.name,
    "family": Patient.name,
    "given": Patient.name,
    "birthdate": Patient.date_of_birth,
    "_id": Patient.id,
    "_lastUpdated": Patient.updated_at,
}


def search_order(sort):
    order = []
    for key in (sort or "").split(","):
        if not key:
            continue
        column = SORT_COLUMNS.get(key.lstrip("-"))
        if column is None:
            fhir_error(
                400, f"Cannot sort by {key!r}; use {', '.join(SORT_COLUMNS)} (a leading '-' descends)."
            )
        order.append(column.desc() if key.startswith("-") else column.asc())
    return [*order, Patient.id]  # ties break on the id, so pages do not overlap


SEARCH_PARAMETERS = frozenset(field.data_key or name for name, field in PatientSearch().fields.items())


def page_link(relation, parameters, offset):
    query = urlencode([*parameters, ("_offset", offset)])
    return {"relation": relation, "url": f"{base_url()}/Patient?{query}"}


# --- routes -----------------------------------------------------------------


@blp.route("/metadata")
class Metadata(MethodView):
    @blp.response(200, CapabilityStatement, content_type=FHIR_JSON)
    @blp.doc(security=[])
    def get(self):
        """FHIR capability statement

        What this server does: FHIR 4.0.1, the Patient resource, its
        interactions and search parameters. Needs no token.
        """
        parameters = [
            ("name", "string", "A word of the name starts with the value; :contains and :exact"),
            ("family", "string", "A word of the name after the first starts with the value"),
            ("given", "string", "The name starts with the value"),
            ("birthdate", "date", "Prefixes eq, ne, lt, gt, le, ge, sa, eb; YYYY, YYYY-MM or YYYY-MM-DD"),
            ("email", "token", "The email, case-insensitive"),
            ("identifier", "token", f"The medical record number ({RECORD_NUMBER_SYSTEM}|value)"),
            ("gender", "token", "male, female, other or unknown"),
            ("_id", "token", "The patient's id"),
        ]
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "publisher": "Patient Management System",
            "kind": "instance",
            "software": {"name": "Patient Management System patient service"},
            "implementation": {"description": "Patients as FHIR R4 Patient resources", "url": base_url()},
            "fhirVersion": FHIR_VERSION,
            "format": [FHIR_JSON, "json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "description": "A bearer token from POST /auth/login; reads need any signed-in user, "
                        "writes the ADMIN role."
                    },
                    "resource": [
                        {
                            "type": "Patient",
                            "profile": "http://hl7.org/fhir/StructureDefinition/Patient",
                            "interaction": [
                                {"code": code}
                                for code in ("read", "vread", "search-type", "create", "update", "delete")
                            ],
                            "versioning": "versioned-update",
                            "readHistory": False,
                            "updateCreate": False,
                            "conditionalCreate": False,
                            "conditionalRead": "not-supported",
                            "conditionalUpdate": False,
                            "conditionalDelete": "not-supported",
                            "searchParam": [
                                {"name": name, "type": kind, "documentation": text}
                                for name, kind, text in parameters
                            ],
                        }
                    ],
                }
            ],
        }


@blp.route("/Patient")
class Patients(MethodView):
    @require_role(USER)
    @blp.arguments(PatientSearch(), location="query")
    @blp.response(200, Bundle, content_type=FHIR_JSON)
    @with_errors(
        (400, "A search parameter's value is not understood"),
        (422, "_count or _offset is out of range, or a parameter is too long"),
    )
    def get(self, query):
        """Search patients (FHIR)

        A searchset Bundle with the total and `self`, `next` and `previous`
        links; `_count` patients per page from `_offset`.
        """
        filters = search_filters(query)
        order = search_order(query.get("_sort"))
        count, offset = query["_count"], query["_offset"]
        matching = sa.select(Patient).where(*filters)
        total = db.session.scalar(sa.select(sa.func.count()).select_from(matching.subquery()))
        found = []
        if count and offset < total:
            found = db.session.scalars(matching.order_by(*order).offset(offset).limit(count)).all()
        # The links repeat the parameters this search used, with the page's _count and _offset.
        parameters = [
            (key, value)
            for key, value in request.args.items(multi=True)
            if key in SEARCH_PARAMETERS and key not in ("_count", "_offset")
        ]
        parameters.append(("_count", count))
        link = [page_link("self", parameters, offset)]
        if count and offset + count < total:
            link.append(page_link("next", parameters, offset + count))
        if count and offset > 0:
            link.append(page_link("previous", parameters, max(0, offset - count)))
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": link,
            "entry": [
                {
                    "fullUrl": f"{base_url()}/Patient/{patient.id}",
                    "resource": resource_of(patient),
                    "search": {"mode": "match"},
                }
                for patient in found
            ],
        }

    @require_role(ADMIN)
    @blp.arguments(FhirPatient(), content_type=FHIR_JSON)
    @blp.response(201, FhirPatient, content_type=FHIR_JSON)
    @with_errors(
        (409, "Another patient has this email or record number"),
        (415, "The body is not FHIR JSON"),
        (422, "The Patient is not valid"),
    )
    def post(self, resource):
        """Create a patient (FHIR)

        Through the same path as the REST API's create (billing account,
        event). A Patient without the registration-date extension is
        registered today; one without a record number is assigned one.
        """
        fields = fields_of(resource)
        required_elements(fields)
        fields.setdefault("registeredDate", date.today().isoformat())
        patient = create_patient(validated(PatientSchema(), fields))
        headers = {
            **version_headers(patient),
            "Location": f"{gateway_base_path()}/Patient/{patient.id}/_history/{patient.version}",
        }
        return resource_of(patient), 201, headers


@blp.route("/Patient/<string:patient_id>")
class PatientById(MethodView):
    @require_role(USER)
    @blp.response(200, FhirPatient, content_type=FHIR_JSON)
    @with_errors((404, "No such patient"))
    def get(self, patient_id):
        """Read a patient (FHIR)

        With `ETag: W/"<versionId>"` for a later conditional update.
        """
        patient = patient_or_404(patient_id)
        return resource_of(patient), 200, version_headers(patient)

    @require_role(ADMIN)
    @blp.arguments(FhirPatient(), content_type=FHIR_JSON)
    @blp.response(200, FhirPatient, content_type=FHIR_JSON)
    @with_errors(
        (400, "The resource's id is not the one in the path"),
        (404, "No such patient"),
        (409, "Another patient has this email or record number"),
        (412, "If-Match does not name the current version"),
        (415, "The body is not FHIR JSON"),
        (422, "The Patient is not valid"),
    )
    def put(self, resource, patient_id):
        """Update a patient (FHIR)

        Replaces the patient's elements; a phone or gender left out is
        removed, a registration date or record number left out is kept.
        With `If-Match: W/"<versionId>"` only if unchanged since (else 412).
        Through the same path as the REST API's update.
        """
        if resource.get("id") != patient_id:
            fhir_error(400, f"The resource's id must be {patient_id}, as in the path.", "Patient.id")
        patient = patient_or_404(patient_id)
        checked_if_match(patient)
        fields = fields_of(resource)
        required_elements(fields)
        data = validated(PatientUpdateSchema(), {"phone": None, "gender": None, **fields})
        patient = update_patient(patient, data)
        return resource_of(patient), 200, version_headers(patient)

    @require_role(ADMIN)
    @blp.response(204)
    @with_errors((404, "No such patient"), (412, "If-Match does not name the current version"))
    def delete(self, patient_id):
        """Delete a patient (FHIR)

        Through the same path as the REST API's delete; billing then closes
        the account. With `If-Match`, only if unchanged since.
        """
        patient = patient_or_404(patient_id)
        checked_if_match(patient)
        delete_patient(patient)


@blp.route("/Patient/<string:patient_id>/_history/<string:version_id>")
class PatientVersion(MethodView):
    @require_role(USER)
    @blp.response(200, FhirPatient, content_type=FHIR_JSON)
    @with_errors((404, "No such patient, or not its current version (only that is kept)"))
    def get(self, patient_id, version_id):
        """Read a version of a patient (FHIR)

        Only the current version is kept: an older one is 404.
        """
        patient = patient_or_404(patient_id)
        if version_id != str(patient.version):
            fhir_error(
                404,
                f"Only the current version ({patient.version}) of Patient/{patient_id} is kept.",
                "Patient.meta.versionId",
            )
        return resource_of(patient), 200, version_headers(patient)
