"""Which messages a consumer can handle, and why the others go to the DLQ
(the decoding every consumer shares, pms_common.events)."""

import uuid
from datetime import UTC, datetime

import pytest

from pms_common.events import CREATED, DELETED, UPDATED, InvalidEvent, PatientEvent, decode

from .helpers import patient_event


def test_a_complete_event_decodes_to_canonical_ids():
    patient_id = str(uuid.uuid4())
    event = decode(
        patient_event(
            CREATED,
            patient_id=patient_id.upper(),
            registered_date="2023-11-30",
            occurred_at="2024-02-03T04:05:06.789Z",
        ).SerializeToString()
    )
    assert event.patient_id == patient_id
    assert event.event_type == CREATED
    assert event.registered_month == "2023-11"
    assert event.occurred_at == datetime(2024, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)


@pytest.mark.parametrize("event_type", [UPDATED, DELETED])
def test_only_creates_need_a_registered_date(event_type):
    assert decode(patient_event(event_type, registered_date="").SerializeToString()).registered_month is None


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"", "empty message"),
        (b"\xff\xfe garbage \x00", "not a PatientEvent protobuf"),
        (
            PatientEvent(patientId=str(uuid.uuid4()), event_type=CREATED).SerializeToString(),
            "missing event_id",
        ),
        (patient_event(event_id="42").SerializeToString(), "event_id is not a UUID"),
        (
            patient_event(event_type="PATIENT_ARCHIVED").SerializeToString(),
            "unknown event_type 'PATIENT_ARCHIVED'",
        ),
        (patient_event(patient_id="not-a-uuid").SerializeToString(), "patientId is not a UUID"),
        (patient_event(occurred_at="yesterday").SerializeToString(), "occurred_at is not an RFC 3339 time"),
        (
            patient_event(occurred_at="2024-01-01T10:00:00").SerializeToString(),
            "occurred_at has no UTC offset",
        ),
        (patient_event(registered_date="").SerializeToString(), "missing registered_date"),
        (
            patient_event(registered_date="2024-02-30").SerializeToString(),
            "registered_date is not a YYYY-MM-DD",
        ),
        (
            patient_event(registered_date="20240115").SerializeToString(),
            "registered_date is not a YYYY-MM-DD",
        ),
    ],
)
def test_messages_that_can_never_count_say_why(value, reason):
    with pytest.raises(InvalidEvent) as raised:
        decode(value)
    assert str(raised.value).startswith(reason)
