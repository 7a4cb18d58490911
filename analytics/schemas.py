"""Request and response shapes (JSON in camelCase, as the rest of the API)."""

import re
from datetime import UTC

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

# Valid in Python and ECMA alike (Swagger UI checks it in the browser): `(?!\n)`
# keeps Python's `$` from matching before a trailing newline.
MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(?!\n)$")


class UtcZDateTime(fields.DateTime):
    """RFC 3339 in UTC with a 'Z', the way the events carry times."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SummarySchema(Schema):
    patientsCreated = fields.Integer(
        required=True,
        attribute="patients_created",
        metadata={"description": "Patients created (each patient once)"},
    )
    patientsUpdated = fields.Integer(
        required=True, attribute="patients_updated", metadata={"description": "Patient update events"}
    )
    patientsDeleted = fields.Integer(
        required=True,
        attribute="patients_deleted",
        metadata={"description": "Patients deleted (each patient once)"},
    )
    activePatients = fields.Integer(
        required=True,
        attribute="active_patients",
        metadata={"description": "Patients created and not deleted"},
    )
    eventsProcessed = fields.Integer(
        required=True, attribute="events_processed", metadata={"description": "Distinct events counted"}
    )
    lastEventAt = UtcZDateTime(
        required=True,
        allow_none=True,
        attribute="last_event_at",
        metadata={"description": "Latest occurred_at of any event counted, or null"},
    )


class MonthlyRegistrationSchema(Schema):
    month = fields.String(required=True, metadata={"example": "2024-01"})
    count = fields.Integer(required=True, metadata={"description": "Registered that month and not deleted"})


def _month_field(data_key, description):
    return fields.String(
        data_key=data_key,
        validate=validate.Regexp(MONTH_PATTERN, error="must be a month as YYYY-MM"),
        metadata={"description": description, "example": "2024-01"},
    )


class RegistrationQuerySchema(Schema):
    first_month = _month_field("from", "First month to include (YYYY-MM)")
    last_month = _month_field("to", "Last month to include (YYYY-MM)")

    @validates_schema
    def months_in_order(self, data, **_kwargs):
        first, last = data.get("first_month"), data.get("last_month")
        if first and last and first > last:
            raise ValidationError("must not be before 'from'", field_name="to")
