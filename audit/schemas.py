"""Request and response shapes (JSON in camelCase, as the rest of the API)."""

import json
from datetime import UTC

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .store import ACTIONS, time_text


class UtcZDateTime(fields.DateTime):
    """RFC 3339 in UTC with a 'Z' and microseconds, as the entry's hash spells it."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else time_text(value)


class FieldNames(fields.Field):
    """The stored JSON list of changed field names, as a list (null when not a change)."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else json.loads(value)


class AuditEntrySchema(Schema):
    id = fields.Integer(required=True, metadata={"description": "Position in the chain (consecutive)"})
    time = UtcZDateTime(required=True, metadata={"description": "When it happened (UTC)"})
    actor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The user's email; for a failed login the email tried; null when unknown"},
    )
    actorRole = fields.String(required=True, allow_none=True, attribute="actor_role")
    action = fields.String(required=True, validate=validate.OneOf(ACTIONS))
    patientId = fields.String(
        required=True, allow_none=True, attribute="patient_id", metadata={"description": "The record's id"}
    )
    requestId = fields.String(
        required=True, allow_none=True, attribute="request_id", metadata={"description": "x-request-id"}
    )
    status = fields.Integer(
        required=True, allow_none=True, metadata={"description": "The HTTP status the client got"}
    )
    clientAddress = fields.String(required=True, allow_none=True, attribute="client_address")
    changed_fields = FieldNames(
        data_key="fields",
        attribute="fields",
        required=True,
        allow_none=True,
        metadata={
            "type": "array",
            "items": {"type": "string"},
            "nullable": True,
            "description": "For changes: the names of the fields that changed (never their values)",
        },
    )
    source = fields.String(
        required=True,
        metadata={
            "description": "What the entry was made from: event:<event id> or log:<file>:<offset>:<digest>"
        },
    )
    prevHash = fields.String(required=True, attribute="prev_hash", metadata={"description": "SHA-256, hex"})
    hash = fields.String(
        required=True, metadata={"description": "SHA-256 of the entry's content and prevHash, hex"}
    )


class AuditQuerySchema(Schema):
    patient_id = fields.UUID(data_key="patientId", metadata={"description": "Entries about this record"})
    actor = fields.String(validate=validate.Length(min=1, max=320), metadata={"description": "Actor's email"})
    action = fields.String(validate=validate.OneOf(ACTIONS))
    start = fields.AwareDateTime(
        data_key="from",
        default_timezone=UTC,
        metadata={"description": "Earliest time (ISO 8601; UTC when no offset)"},
    )
    end = fields.AwareDateTime(
        data_key="to",
        default_timezone=UTC,
        metadata={"description": "Latest time (ISO 8601; UTC when no offset)"},
    )

    @validates_schema
    def times_in_order(self, data, **_kwargs):
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            raise ValidationError("must not be before 'from'", field_name="to")


class VerdictSchema(Schema):
    ok = fields.Boolean(required=True)
    entries = fields.Integer(
        required=True, metadata={"description": "Entries checked (since the archive's anchor)"}
    )
    firstBrokenId = fields.Integer(
        metadata={"description": "When not ok: the first id whose entry is missing, altered or unlinked"}
    )
