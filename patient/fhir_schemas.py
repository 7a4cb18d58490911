"""The FHIR R4 shapes of the patient service: the Patient resource (the
elements this service keeps), the searchset Bundle, the OperationOutcome of
every error, the CapabilityStatement, and the search parameters.

Elements a Patient may have that this service does not keep are left out of
a write, as FHIR allows a server to do; an element it keeps is checked."""

import marshmallow as ma
from marshmallow import validate

from .schemas import GENDERS

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
DATE_PATTERN = r"^([0-9]{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$"
# Search prefixes of a date parameter (FHIR R4 search, "prefix").
DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")
SORT_KEYS = ("name", "family", "given", "birthdate", "_id", "_lastUpdated")
MAX_COUNT = 500
DEFAULT_COUNT = 20


class Element(ma.Schema):
    class Meta:
        ordered = True
        unknown = ma.EXCLUDE


class Coding(Element):
    system = ma.fields.String()
    code = ma.fields.String()
    display = ma.fields.String()


class CodeableConcept(Element):
    coding = ma.fields.List(ma.fields.Nested(Coding))
    text = ma.fields.String()


class Identifier(Element):
    use = ma.fields.String(validate=validate.OneOf(("usual", "official", "temp", "secondary", "old")))
    type = ma.fields.Nested(CodeableConcept)
    system = ma.fields.String(metadata={"description": "The record number's system URI"})
    value = ma.fields.String(validate=validate.Length(min=1))


class HumanName(Element):
    use = ma.fields.String(
        validate=validate.OneOf(("usual", "official", "temp", "nickname", "anonymous", "old", "maiden"))
    )
    text = ma.fields.String(validate=validate.Length(min=1))
    family = ma.fields.String(validate=validate.Length(min=1))
    given = ma.fields.List(ma.fields.String(validate=validate.Length(min=1)))


class ContactPoint(Element):
    system = ma.fields.String(
        validate=validate.OneOf(("phone", "fax", "email", "pager", "url", "sms", "other"))
    )
    value = ma.fields.String(validate=validate.Length(min=1))
    use = ma.fields.String(validate=validate.OneOf(("home", "work", "temp", "old", "mobile")))


class Address(Element):
    use = ma.fields.String(validate=validate.OneOf(("home", "work", "temp", "old", "billing")))
    text = ma.fields.String(validate=validate.Length(min=1))
    line = ma.fields.List(ma.fields.String(validate=validate.Length(min=1)))
    city = ma.fields.String()
    district = ma.fields.String()
    state = ma.fields.String()
    postalCode = ma.fields.String()
    country = ma.fields.String()


class Extension(Element):
    url = ma.fields.String(required=True)
    valueDate = ma.fields.String(validate=validate.Regexp(DATE_PATTERN))


class Meta(Element):
    versionId = ma.fields.String(dump_only=True)
    lastUpdated = ma.fields.String(dump_only=True)


class FhirPatient(Element):
    """A Patient: the elements this service keeps."""

    resourceType = ma.fields.String(required=True, validate=validate.Equal("Patient"))
    id = ma.fields.String(metadata={"description": "The patient's UUID, as on the REST API"})
    meta = ma.fields.Nested(Meta)
    extension = ma.fields.List(
        ma.fields.Nested(Extension),
        metadata={
            "description": "The registration date (valueDate); a create without one is registered today"
        },
    )
    identifier = ma.fields.List(
        ma.fields.Nested(Identifier), metadata={"description": "The medical record number"}
    )
    name = ma.fields.List(
        ma.fields.Nested(HumanName), metadata={"description": "The first is the patient's name"}
    )
    telecom = ma.fields.List(
        ma.fields.Nested(ContactPoint), metadata={"description": "The email (required) and a phone"}
    )
    gender = ma.fields.String(validate=validate.OneOf(GENDERS))
    birthDate = ma.fields.String(validate=validate.Regexp(DATE_PATTERN))
    address = ma.fields.List(ma.fields.Nested(Address), metadata={"description": "The first is kept"})


class BundleLink(Element):
    relation = ma.fields.String()
    url = ma.fields.String()


class BundleSearch(Element):
    mode = ma.fields.String()


class BundleEntry(Element):
    fullUrl = ma.fields.String()
    resource = ma.fields.Nested(FhirPatient)
    search = ma.fields.Nested(BundleSearch)


class Bundle(Element):
    """A searchset Bundle of Patients."""

    resourceType = ma.fields.String()
    type = ma.fields.String()
    total = ma.fields.Integer()
    link = ma.fields.List(ma.fields.Nested(BundleLink))
    entry = ma.fields.List(ma.fields.Nested(BundleEntry))


class Issue(Element):
    severity = ma.fields.String()
    code = ma.fields.String()
    diagnostics = ma.fields.String()
    expression = ma.fields.List(ma.fields.String())


class OperationOutcome(Element):
    """What went wrong: every error of the FHIR API answers one."""

    resourceType = ma.fields.String()
    issue = ma.fields.List(ma.fields.Nested(Issue))


class CapabilityStatement(Element):
    """What this server does (FHIR 4.0.1; the Patient resource)."""

    resourceType = ma.fields.String()
    status = ma.fields.String()
    date = ma.fields.String()
    publisher = ma.fields.String()
    kind = ma.fields.String()
    software = ma.fields.Dict()
    implementation = ma.fields.Dict()
    fhirVersion = ma.fields.String()
    format = ma.fields.List(ma.fields.String())
    rest = ma.fields.List(ma.fields.Dict())


def _token(description):
    return ma.fields.String(validate=validate.Length(min=1, max=255), metadata={"description": description})


class PatientSearch(ma.Schema):
    """GET /fhir/Patient's parameters. Parameters this server does not know
    are ignored, as FHIR's lenient handling does; the Bundle's self link
    shows those it used."""

    class Meta:
        ordered = True
        unknown = ma.EXCLUDE

    name = _token("A word of the name starts with this (case-insensitive)")
    name_contains = ma.fields.String(
        data_key="name:contains",
        validate=validate.Length(min=1, max=100),
        metadata={"description": "The name contains this (case-insensitive)"},
    )
    name_exact = ma.fields.String(
        data_key="name:exact",
        validate=validate.Length(min=1, max=100),
        metadata={"description": "The whole name"},
    )
    family = _token("A word of the name after the first starts with this")
    given = _token("The name starts with this")
    birthdate = ma.fields.List(
        ma.fields.String(validate=validate.Length(min=4, max=12)),
        metadata={
            "description": "YYYY, YYYY-MM or YYYY-MM-DD, with a prefix (eq, ne, lt, gt, le, ge, sa, eb); "
            "repeat it for a range"
        },
    )
    email = _token("The email (case-insensitive, look-alikes match)")
    identifier = _token("The record number: value, or system|value")
    gender = ma.fields.String(
        validate=validate.Length(min=1, max=100),
        metadata={"description": "male, female, other or unknown; several separated by commas"},
    )
    _id = ma.fields.String(
        data_key="_id",
        validate=validate.Length(min=1, max=4000),
        metadata={"description": "Ids, comma-separated"},
    )
    _count = ma.fields.Integer(
        data_key="_count",
        load_default=DEFAULT_COUNT,
        validate=validate.Range(min=0, max=MAX_COUNT),
        metadata={"description": f"Patients per page (0 counts only; at most {MAX_COUNT})"},
    )
    _offset = ma.fields.Integer(
        data_key="_offset",
        load_default=0,
        validate=validate.Range(min=0, max=10_000_000),
        metadata={"description": "How many matches to skip (the next and previous links set it)"},
    )
    _sort = ma.fields.String(
        data_key="_sort",
        validate=validate.Length(min=1, max=200),
        metadata={
            "description": f"Comma-separated keys of {', '.join(SORT_KEYS)}; a leading '-' sorts descending"
        },
    )
