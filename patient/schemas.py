"""The JSON shapes of the patient API (camelCase, as the Java original)."""

from datetime import date

import marshmallow as ma
from marshmallow import validate

from pms_common.identity import email_key

EARLIEST_BIRTH_DATE = date(1880, 1, 1)
MAX_EMAIL = 255  # the email and email_key columns
SORT_FIELDS = ("name", "dateOfBirth", "registeredDate")
# FHIR's administrative gender codes.
GENDERS = ("male", "female", "other", "unknown")
MAX_PHONE = 32
MAX_RECORD_NUMBER = 32
# Digits with the usual separators and an optional leading +, e.g. +44 20 7946 0958 or (555) 010-4477.
PHONE_PATTERN = r"^\+?[0-9 ()./-]+$"
MIN_PHONE_DIGITS = 3
RECORD_NUMBER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
# The documents' examples: Swagger UI's "Try it out" body, so a create from it
# succeeds (once: the email is then taken) and makes a plausible patient.
EXAMPLE_ADDRESS = "27 Harbour Road, Portsmouth"
MOVED_ADDRESS = "4 Elm Close, Southsea"


def not_blank(value):
    if not value.strip():
        raise ma.ValidationError("Must not be blank.")


def key_fits(value):
    # NFKC can lengthen an address (a ligature becomes its letters); its key must fit its column too.
    if len(email_key(value)) > MAX_EMAIL:
        raise ma.ValidationError(f"Must be at most {MAX_EMAIL} characters once normalised.")


def not_in_future(value):
    if value > date.today():
        raise ma.ValidationError("Must not be in the future.")


def enough_digits(value):
    if sum(char.isdigit() for char in value) < MIN_PHONE_DIGITS:
        raise ma.ValidationError(f"Must have at least {MIN_PHONE_DIGITS} digits.")


def plausible_birth_date(value):
    not_in_future(value)
    if value < EARLIEST_BIRTH_DATE:
        raise ma.ValidationError(f"Must not be before {EARLIEST_BIRTH_DATE.isoformat()}.")


class PatientSchema(ma.Schema):
    """A patient as the API returns it."""

    class Meta:
        ordered = True

    id = ma.fields.UUID(dump_only=True, metadata={"example": "7c9e6679-7425-40de-944b-e07fc1f90ae7"})
    name = ma.fields.String(
        required=True,
        validate=[validate.Length(min=1, max=100), not_blank],
        metadata={"example": "Amelia Hart"},
    )
    email = ma.fields.Email(
        required=True,
        validate=[validate.Length(max=MAX_EMAIL), key_fits],
        metadata={
            "description": "Unique among patients, compared case-insensitively",
            "example": "amelia.hart@example.com",
        },
    )
    address = ma.fields.String(
        required=True,
        validate=[validate.Length(min=1, max=255), not_blank],
        metadata={"example": EXAMPLE_ADDRESS},
    )
    dateOfBirth = ma.fields.Date(
        required=True,
        attribute="date_of_birth",
        validate=plausible_birth_date,
        metadata={
            "description": f"Not in the future nor before {EARLIEST_BIRTH_DATE}",
            "example": "1987-04-12",
        },
    )
    registeredDate = ma.fields.Date(
        required=True,
        attribute="registered_date",
        validate=not_in_future,
        metadata={"description": "Not in the future nor before dateOfBirth", "example": "2025-03-03"},
    )
    billingAccountId = ma.fields.String(
        dump_only=True,
        attribute="billing_account_id",
        allow_none=True,
        metadata={"description": "Set once billing opened the account", "example": "ACC-MFRGGZDFMZTWQ2LK"},
    )
    billingStatus = ma.fields.String(
        dump_only=True,
        attribute="billing_status",
        metadata={
            "description": "PENDING until billing opened the account, then ACTIVE",
            "example": "ACTIVE",
        },
    )

    # Optional: a client of the original never sends them. A create without
    # them stores none (and is assigned a record number); an update without them keeps them.
    phone = ma.fields.String(
        allow_none=True,
        validate=[validate.Length(min=1, max=MAX_PHONE), validate.Regexp(PHONE_PATTERN), enough_digits],
        metadata={
            "description": "Digits, spaces, ( ) . / - and an optional leading +",
            "example": "+44 23 9282 1234",
        },
    )
    gender = ma.fields.String(
        allow_none=True,
        validate=validate.OneOf(GENDERS),
        metadata={"description": "Administrative gender (FHIR's codes)", "example": "female"},
    )
    medicalRecordNumber = ma.fields.String(
        attribute="medical_record_number",
        validate=[validate.Length(min=1, max=MAX_RECORD_NUMBER), validate.Regexp(RECORD_NUMBER_PATTERN)],
        metadata={
            "description": "Unique among patients. Assigned when a create leaves it out: MRN- and ten "
            "Crockford base32 characters, e.g. MRN-7K2D9QX4M1",
            # Without one, Swagger UI's example body would send the placeholder "string".
            "example": "MRN-7K2D9QX4M1",
        },
    )

    @ma.validates_schema
    def registered_after_birth(self, data, **_kwargs):
        born, registered = data.get("date_of_birth"), data.get("registered_date")
        if born and registered and registered < born:
            raise ma.ValidationError("Must not be before dateOfBirth.", "registeredDate")


class PatientUpdateSchema(PatientSchema):
    """PUT body: as create, but registeredDate may be left out (as in the original)."""

    registeredDate = ma.fields.Date(
        attribute="registered_date",
        validate=not_in_future,
        metadata={
            "description": "Not in the future nor before dateOfBirth; kept if left out",
            "example": "2025-03-03",
        },
    )
    # The example is a move, so an update from the documents' examples changes the example patient.
    address = ma.fields.String(
        required=True,
        validate=[validate.Length(min=1, max=255), not_blank],
        metadata={"example": MOVED_ADDRESS},
    )


class PatientQuerySchema(ma.Schema):
    """Filters and order of GET /patients."""

    class Meta:
        unknown = ma.EXCLUDE

    name = ma.fields.String(
        validate=validate.Length(min=1, max=100),
        metadata={"description": "Case-insensitive substring of the name"},
    )
    email = ma.fields.String(
        validate=validate.Length(min=1, max=255),
        metadata={
            "description": "Exact email, compared case-insensitively and NFKC-normalised (look-alikes match)"
        },
    )
    dateOfBirth = ma.fields.Date(
        attribute="date_of_birth", metadata={"description": "Exact date of birth, YYYY-MM-DD"}
    )
    medicalRecordNumber = ma.fields.String(
        attribute="medical_record_number",
        validate=validate.Length(min=1, max=MAX_RECORD_NUMBER),
        metadata={"description": "Exact medical record number"},
    )
    sort = ma.fields.String(
        load_default="name",
        validate=validate.OneOf([*SORT_FIELDS, *(f"-{field}" for field in SORT_FIELDS)]),
        metadata={"description": "Field to sort by; a leading '-' sorts descending. Ties break on id."},
    )
