"""The BillingService RPCs: validation, the store call, one log line per call."""
import functools
import logging
import re
import time
import uuid
from datetime import timezone

import grpc
from sqlalchemy.exc import OperationalError

from pms_common.protos import billing_service_pb2 as pb
from pms_common.protos import billing_service_pb2_grpc

log = logging.getLogger(__name__)
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
MAX_NAME, MAX_EMAIL = 255, 320


class Refused(Exception):
    """The call fails with this status and message (a client error, not ours)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(field, problem):
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


def parse_patient_id(text):
    try:
        return uuid.UUID(text)
    except ValueError:
        raise invalid("patientId", "must be a UUID") from None


def required_text(value, field, max_length):
    value = value.strip()
    if not value:
        raise invalid(field, "is required")
    if len(value) > max_length:
        raise invalid(field, f"must be at most {max_length} characters")
    return value


def rfc3339(moment):
    if moment is None:
        return ""
    # SQLite hands timestamps back without a zone; they were written in UTC.
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_message(row):
    return pb.BillingAccount(accountId=row.account_id, patientId=str(row.patient_id),
                             status=row.status, name=row.name, email=row.email,
                             createdAt=rfc3339(row.created_at), closedAt=rfc3339(row.closed_at))


def logged_rpc(method):
    """Runs an RPC, turns failures into status codes, logs the outcome as one line."""
    rpc = method.__name__

    @functools.wraps(method)
    def handler(self, request, context):
        started = time.perf_counter()
        fields = {"rpc": rpc, "patient_id": request.patientId[:64]}
        try:
            response = method(self, request, context)
        except Refused as refused:
            code, message = refused.code, refused.message
        except OperationalError:
            log.exception("billing store unavailable", extra=fields)
            code, message = grpc.StatusCode.UNAVAILABLE, "billing store unavailable; retry later"
        except Exception:
            log.exception("unexpected failure", extra=fields)
            code, message = grpc.StatusCode.INTERNAL, "internal error"
        else:
            code, message = grpc.StatusCode.OK, None
            fields["account_id"] = response.accountId
        fields.update(code=code.name, duration_ms=round((time.perf_counter() - started) * 1000, 2))
        log.info("%s %s", rpc, code.name, extra=fields)
        if code is not grpc.StatusCode.OK:
            context.abort(code, message)
        return response

    return handler


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    def __init__(self, store):
        self.store = store

    @logged_rpc
    def CreateBillingAccount(self, request, context):
        patient_id = parse_patient_id(request.patientId)
        name = required_text(request.name, "name", MAX_NAME)
        email = required_text(request.email, "email", MAX_EMAIL)
        if not EMAIL.fullmatch(email):
            raise invalid("email", "must be an email address")
        row = self.store.open_account(patient_id, name, email)
        return pb.BillingResponse(accountId=row.account_id, status=row.status)

    @logged_rpc
    def GetBillingAccount(self, request, context):
        return account_message(self._found(self.store.get_account(parse_patient_id(request.patientId))))

    @logged_rpc
    def CloseBillingAccount(self, request, context):
        return account_message(self._found(self.store.close_account(parse_patient_id(request.patientId))))

    @staticmethod
    def _found(row):
        if row is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, "no billing account for this patientId")
        return row
