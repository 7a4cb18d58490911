"""The JSON shapes of the patient API (camelCase, as the Java original)."""
from datetime import date

import marshmallow as ma
from marshmallow import validate

EARLIEST_BIRTH_DATE = date(1880, 1, 1)
SORT_FIELDS = ("name", "dateOfBirth", "registeredDate")


def not_blank(value):
    if not value.strip():
        raise ma.ValidationError("Must not be blank.")


def not_in_future(value):
    if value > date.today():
        raise ma.ValidationError("Must not be in the future.")


def plausible_birth_date(value):
    not_in_future(value)
    if value < EARLIEST_BIRTH_DATE:
        raise ma.ValidationError(f"Must not be before {EARLIEST_BIRTH_DATE.isoformat()}.")


class PatientSchema(ma.Schema):
    """A patient as the API returns it."""

    class Meta:
        ordered = True

    id = ma.fields.UUID(dump_only=True)
    name = ma.fields.String(required=True, validate=[validate.Length(min=1, max=100), not_blank])
    email = ma.fields.Email(required=True, validate=validate.Length(max=255))
    address = ma.fields.String(required=True, validate=[validate.Length(min=1, max=255), not_blank])
    dateOfBirth = ma.fields.Date(required=True, attribute="date_of_birth",
                                 validate=plausible_birth_date)
    registeredDate = ma.fields.Date(required=True, attribute="registered_date",
                                    validate=not_in_future)
    billingAccountId = ma.fields.String(dump_only=True, attribute="billing_account_id",
                                        allow_none=True,
                                        metadata={"description": "Set once billing opened the account"})
    billingStatus = ma.fields.String(dump_only=True, attribute="billing_status",
                                     metadata={"description": "PENDING until billing opened the account, then ACTIVE"})

    @ma.validates_schema
    def registered_after_birth(self, data, **_kwargs):
        born, registered = data.get("date_of_birth"), data.get("registered_date")
        if born and registered and registered < born:
            raise ma.ValidationError("Must not be before dateOfBirth.", "registeredDate")


class PatientUpdateSchema(PatientSchema):
    """PUT body: as create, but registeredDate may be left out (as in the original)."""

    registeredDate = ma.fields.Date(attribute="registered_date", validate=not_in_future)


class PatientQuerySchema(ma.Schema):
    """Filters and order of GET /patients."""

    class Meta:
        unknown = ma.EXCLUDE

    name = ma.fields.String(validate=validate.Length(min=1, max=100),
                            metadata={"description": "Case-insensitive substring of the name"})
    email = ma.fields.String(validate=validate.Length(min=1, max=255),
                             metadata={"description": "Case-insensitive exact email"})
    sort = ma.fields.String(
        load_default="name",
        validate=validate.OneOf([*SORT_FIELDS, *(f"-{field}" for field in SORT_FIELDS)]),
        metadata={"description": "Field to sort by; a leading '-' sorts descending. Ties break on id."},
    )
