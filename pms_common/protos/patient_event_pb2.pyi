from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PatientEvent(_message.Message):
    __slots__ = ("patientId", "name", "email", "event_type", "event_id", "occurred_at", "address", "date_of_birth", "registered_date")
    PATIENTID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DATE_OF_BIRTH_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_DATE_FIELD_NUMBER: _ClassVar[int]
    patientId: str
    name: str
    email: str
    event_type: str
    event_id: str
    occurred_at: str
    address: str
    date_of_birth: str
    registered_date: str
    def __init__(self, patientId: _Optional[str] = ..., name: _Optional[str] = ..., email: _Optional[str] = ..., event_type: _Optional[str] = ..., event_id: _Optional[str] = ..., occurred_at: _Optional[str] = ..., address: _Optional[str] = ..., date_of_birth: _Optional[str] = ..., registered_date: _Optional[str] = ...) -> None: ...
