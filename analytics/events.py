"""Decoding and checking one PatientEvent message. What fails here is not
retried: the consumer sends it to the dead-letter topic with the reason."""
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone

from google.protobuf.message import DecodeError

from pms_common.events import CREATED, EVENT_TYPES, PatientEvent

DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


class InvalidEvent(ValueError):
    """A message that can never be counted; str() is the dead-letter reason."""


@dataclass(frozen=True)
class Event:
    event_id: str          # canonical lowercase UUID
    event_type: str
    patient_id: str        # canonical lowercase UUID
    occurred_at: datetime  # UTC
    registered_month: str | None  # YYYY-MM, set on PATIENT_CREATED


def decode(value):
    if not value:
        raise InvalidEvent("empty message")
    try:
        message = PatientEvent.FromString(value)
    except DecodeError as exc:
        raise InvalidEvent(f"not a PatientEvent protobuf: {exc}") from None
    if message.event_type not in EVENT_TYPES:
        raise InvalidEvent(f"unknown event_type {message.event_type[:100]!r}")
    return Event(
        event_id=_uuid(message.event_id, "event_id"),
        event_type=message.event_type,
        patient_id=_uuid(message.patientId, "patientId"),
        occurred_at=_timestamp(message.occurred_at, "occurred_at"),
        registered_month=(_date(message.registered_date, "registered_date")[:7]
                          if message.event_type == CREATED else None),
    )


def _uuid(text, field):
    if not text:
        raise InvalidEvent(f"missing {field}")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidEvent(f"{field} is not a UUID: {text[:100]!r}") from None


def _timestamp(text, field):
    if not text:
        raise InvalidEvent(f"missing {field}")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"{field} is not an RFC 3339 time: {text[:100]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"{field} has no UTC offset: {text[:100]!r}")
    return parsed.astimezone(timezone.utc)


def _date(text, field):
    if not text:
        raise InvalidEvent(f"missing {field}")
    try:
        if not DATE_PATTERN.fullmatch(text):
            raise ValueError
        date.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"{field} is not a YYYY-MM-DD date: {text[:100]!r}") from None
    return text
