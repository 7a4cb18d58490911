from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PatientEvent(_message.Message):
    __slots__ = ("patientId", "name", "email", "event_type", "event_id", "occurred_at", "address", "date_of_birth", "registered_date", "audit")
    PATIENTID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DATE_OF_BIRTH_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_DATE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    patientId: str
    name: str
    email: str
    event_type: str
    event_id: str
    occurred_at: str
    address: str
    date_of_birth: str
    registered_date: str
    audit: AuditContext
    def __init__(self, patientId: _Optional[str] = ..., name: _Optional[str] = ..., email: _Optional[str] = ..., event_type: _Optional[str] = ..., event_id: _Optional[str] = ..., occurred_at: _Optional[str] = ..., address: _Optional[str] = ..., date_of_birth: _Optional[str] = ..., registered_date: _Optional[str] = ..., audit: _Optional[_Union[AuditContext, _Mapping]] = ...) -> None: ...

class AuditContext(_message.Message):
    __slots__ = ("actor_email", "actor_role", "request_id", "client_address", "changed_fields")
    ACTOR_EMAIL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ROLE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    actor_email: str
    actor_role: str
    request_id: str
    client_address: str
    changed_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actor_email: _Optional[str] = ..., actor_role: _Optional[str] = ..., request_id: _Optional[str] = ..., client_address: _Optional[str] = ..., changed_fields: _Optional[_Iterable[str]] = ...) -> None: ...
