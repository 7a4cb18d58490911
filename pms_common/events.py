"""The patient event contract: topic names, event types, encoding."""
from pms_common.protos.patient_event_pb2 import PatientEvent

PATIENT_TOPIC = "patient"
DEAD_LETTER_TOPIC = "patient.dlq"
CREATED, UPDATED, DELETED = "PATIENT_CREATED", "PATIENT_UPDATED", "PATIENT_DELETED"
EVENT_TYPES = (CREATED, UPDATED, DELETED)

__all__ = ["PatientEvent", "PATIENT_TOPIC", "DEAD_LETTER_TOPIC", "CREATED", "UPDATED", "DELETED",
           "EVENT_TYPES"]
