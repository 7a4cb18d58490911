"""The patient event contract: topic names, event types, the protobuf, and
the one decoding every consumer applies.

`decode(value)` turns a message's bytes into an `Event` or raises
`InvalidEvent`, whose text is the reason the message can never be handled;
the consumer loop (pms_common.consumer) sends such a message to the
dead-letter topic with that reason, so every consumer treats a bad message
the same way."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

from google.protobuf.message import DecodeError

from pms_common.protos.patient_event_pb2 import PatientEvent

PATIENT_TOPIC = "patient"
DEAD_LETTER_TOPIC = "patient.dlq"
CREATED, UPDATED, DELETED = "PATIENT_CREATED", "PATIENT_UPDATED", "PATIENT_DELETED"
EVENT_TYPES = (CREATED, UPDATED, DELETED)
DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
QUOTED_MAX = 100  # characters of a bad value a reason quotes

__all__ = [
    "PatientEvent",
    "PATIENT_TOPIC",
    "DEAD_LETTER_TOPIC",
    "CREATED",
    "UPDATED",
    "DELETED",
    "EVENT_TYPES",
    "Event",
    "InvalidEvent",
    "decode",
]


class InvalidEvent(ValueError):
    """A message that can never be handled; str() is the dead-letter reason."""


@dataclass(frozen=True)
class Event:
    """What a consumer needs of a PatientEvent, checked and canonical."""

    event_id: str  # canonical lowercase UUID
    event_type: str
    patient_id: str  # canonical lowercase UUID
    occurred_at: datetime  # UTC
    registered_month: str | None  # YYYY-MM, set on PATIENT_CREATED
    # Who made the change (the audit trail reads it); None when the event has none.
    audit: AuditFacts | None = None


@dataclass(frozen=True)
class AuditFacts:
    """The request a change came from, as the event's AuditContext carries it."""

    actor_email: str | None
    actor_role: str | None
    request_id: str | None
    client_address: str | None
    changed_fields: tuple[str, ...]


def decode(value: bytes | None) -> Event:
    """The event in a message's bytes; InvalidEvent saying why when there is none."""
    if not value:
        raise InvalidEvent("empty message")
    try:
        message = PatientEvent.FromString(value)
    except DecodeError as exc:
        raise InvalidEvent(f"not a PatientEvent protobuf: {exc}") from None
    if message.event_type not in EVENT_TYPES:
        raise InvalidEvent(f"unknown event_type {message.event_type[:QUOTED_MAX]!r}")
    return Event(
        event_id=_uuid(message.event_id, "event_id"),
        event_type=message.event_type,
        patient_id=_uuid(message.patientId, "patientId"),
        occurred_at=_timestamp(message.occurred_at, "occurred_at"),
        registered_month=(
            _date(message.registered_date, "registered_date")[:7] if message.event_type == CREATED else None
        ),
        audit=_audit_facts(message),
    )


def _audit_facts(message: PatientEvent) -> AuditFacts | None:
    if not message.HasField("audit"):
        return None
    context = message.audit
    return AuditFacts(
        actor_email=context.actor_email or None,
        actor_role=context.actor_role or None,
        request_id=context.request_id or None,
        client_address=context.client_address or None,
        changed_fields=tuple(context.changed_fields),
    )


def _uuid(text: str, field: str) -> str:
    if not text:
        raise InvalidEvent(f"missing {field}")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidEvent(f"{field} is not a UUID: {text[:QUOTED_MAX]!r}") from None


def _timestamp(text: str, field: str) -> datetime:
    if not text:
        raise InvalidEvent(f"missing {field}")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"{field} is not an RFC 3339 time: {text[:QUOTED_MAX]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"{field} has no UTC offset: {text[:QUOTED_MAX]!r}")
    return parsed.astimezone(UTC)


def _date(text: str, field: str) -> str:
    if not text:
        raise InvalidEvent(f"missing {field}")
    try:
        if not DATE_PATTERN.fullmatch(text):
            raise ValueError
        date.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"{field} is not a YYYY-MM-DD date: {text[:QUOTED_MAX]!r}") from None
    return text
