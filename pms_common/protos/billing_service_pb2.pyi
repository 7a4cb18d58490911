from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class BillingRequest(_message.Message):
    __slots__ = ("patientId", "name", "email")
    PATIENTID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    patientId: str
    name: str
    email: str
    def __init__(self, patientId: _Optional[str] = ..., name: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class BillingResponse(_message.Message):
    __slots__ = ("accountId", "status")
    ACCOUNTID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    accountId: str
    status: str
    def __init__(self, accountId: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class GetBillingAccountRequest(_message.Message):
    __slots__ = ("patientId",)
    PATIENTID_FIELD_NUMBER: _ClassVar[int]
    patientId: str
    def __init__(self, patientId: _Optional[str] = ...) -> None: ...

class CloseBillingAccountRequest(_message.Message):
    __slots__ = ("patientId",)
    PATIENTID_FIELD_NUMBER: _ClassVar[int]
    patientId: str
    def __init__(self, patientId: _Optional[str] = ...) -> None: ...

class BillingAccount(_message.Message):
    __slots__ = ("accountId", "patientId", "status", "name", "email", "createdAt", "closedAt")
    ACCOUNTID_FIELD_NUMBER: _ClassVar[int]
    PATIENTID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CREATEDAT_FIELD_NUMBER: _ClassVar[int]
    CLOSEDAT_FIELD_NUMBER: _ClassVar[int]
    accountId: str
    patientId: str
    status: str
    name: str
    email: str
    createdAt: str
    closedAt: str
    def __init__(self, accountId: _Optional[str] = ..., patientId: _Optional[str] = ..., status: _Optional[str] = ..., name: _Optional[str] = ..., email: _Optional[str] = ..., createdAt: _Optional[str] = ..., closedAt: _Optional[str] = ...) -> None: ...

class ListActiveAccountsRequest(_message.Message):
    __slots__ = ("minAgeSeconds", "afterPatientId", "pageSize")
    MINAGESECONDS_FIELD_NUMBER: _ClassVar[int]
    AFTERPATIENTID_FIELD_NUMBER: _ClassVar[int]
    PAGESIZE_FIELD_NUMBER: _ClassVar[int]
    minAgeSeconds: int
    afterPatientId: str
    pageSize: int
    def __init__(self, minAgeSeconds: _Optional[int] = ..., afterPatientId: _Optional[str] = ..., pageSize: _Optional[int] = ...) -> None: ...

class ListActiveAccountsResponse(_message.Message):
    __slots__ = ("patientIds",)
    PATIENTIDS_FIELD_NUMBER: _ClassVar[int]
    patientIds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, patientIds: _Optional[_Iterable[str]] = ...) -> None: ...
