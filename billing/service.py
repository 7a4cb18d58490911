"""The BillingService RPCs: the caller's role, validation, the store call,
one log line per call."""

import functools
import logging
import re
import time
import uuid
from datetime import UTC, timedelta

import grpc
from sqlalchemy.exc import DataError, OperationalError, SQLAlchemyError

from pms_common.db_errors import db_error_fields
from pms_common.identity import ROLE_HEADER, SERVICE, USER, USER_HEADER, role_allows
from pms_common.protos import billing_service_pb2 as pb
from pms_common.protos import billing_service_pb2_grpc

log = logging.getLogger(__name__)
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
MAX_NAME, MAX_EMAIL = 255, 320
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 500, 1000
# gRPC metadata keys are lower case; the gateway's transcoder passes the
# identity headers ext_authz set on as these.
ROLE_KEY, USER_KEY = ROLE_HEADER.lower(), USER_HEADER.lower()


class Refused(Exception):
    """The call fails with this status and message (a client error, not ours)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(field, problem):
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


def parse_patient_id(text, field="patientId"):
    try:
        return uuid.UUID(text)
    except ValueError:
        raise invalid(field, "must be a UUID") from None


def required_text(value, field, max_length):
    value = value.strip()
    if not value:
        raise invalid(field, "is required")
    if len(value) > max_length:
        raise invalid(field, f"must be at most {max_length} characters")
    if "\x00" in value:  # PostgreSQL refuses NUL in text
        raise invalid(field, "must not contain NUL characters")
    return value


class Callers:
    """Who may make a call: a test of the caller's x-user-role, and its name
    for the refusal."""

    def __init__(self, allows, description):
        self.allows, self.description = allows, description

    def check(self, context):
        """The caller's email; Refused without an identity or with a role not allowed."""
        metadata = dict(context.invocation_metadata() or ())
        role, caller = metadata.get(ROLE_KEY), metadata.get(USER_KEY)
        if not role or not caller:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED, f"this needs a caller identity ({USER_KEY}, {ROLE_KEY})"
            )
        if not self.allows(role):
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"this needs {self.description}")
        return caller[:320]


SIGNED_IN_USERS = Callers(lambda role: role_allows(role, USER), "a signed-in user (USER or ADMIN)")
# Opening, closing and listing every open account follow patients' lifecycle:
# only the patient service does them, never a user directly.
OTHER_PARTS = Callers(lambda role: role == SERVICE, f"the {SERVICE} role")


def rfc3339(moment):
    if moment is None:
        return ""
    # SQLite hands timestamps back without a zone; they were written in UTC.
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_message(row):
    return pb.BillingAccount(
        accountId=row.account_id,
        patientId=str(row.patient_id),
        status=row.status,
        name=row.name,
        email=row.email,
        createdAt=rfc3339(row.created_at),
        closedAt=rfc3339(row.closed_at),
    )


def logged_rpc(callers):
    """Checks the caller, runs the RPC, turns failures into status codes and
    logs the outcome as one line. A database error is logged by class and
    SQLSTATE only: its text quotes row values."""

    def decorate(method):
        rpc = method.__name__

        @functools.wraps(method)
        def handler(self, request, context):
            started = time.perf_counter()
            fields = {"rpc": rpc}
            if hasattr(request, "patientId"):
                fields["patient_id"] = request.patientId[:64]
            try:
                fields["by"] = callers.check(context)
                response = method(self, request, context)
            except Refused as refused:
                code, message = refused.code, refused.message
            except OperationalError as exc:
                log.error("billing store unavailable", extra={**fields, **db_error_fields(exc)})
                code, message = grpc.StatusCode.UNAVAILABLE, "billing store unavailable; retry later"
            except DataError as exc:
                log.warning("the billing store refused a value", extra={**fields, **db_error_fields(exc)})
                code = grpc.StatusCode.INVALID_ARGUMENT
                message = "a value is not acceptable to the billing store"
            except SQLAlchemyError as exc:
                log.error("billing store error", extra={**fields, **db_error_fields(exc)})
                code, message = grpc.StatusCode.INTERNAL, "internal error"
            except Exception:
                log.exception("unexpected failure", extra=fields)
                code, message = grpc.StatusCode.INTERNAL, "internal error"
            else:
                code, message = grpc.StatusCode.OK, None
                if hasattr(response, "accountId"):
                    fields["account_id"] = response.accountId
                else:
                    fields["accounts"] = len(response.patientIds)
            fields.update(code=code.name, duration_ms=round((time.perf_counter() - started) * 1000, 2))
            log.info("rpc finished", extra=fields)
            if code is not grpc.StatusCode.OK:
                context.abort(code, message)
            return response

        return handler

    return decorate


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    def __init__(self, store):
        self.store = store

    @logged_rpc(OTHER_PARTS)
    def CreateBillingAccount(self, request, context):
        patient_id = parse_patient_id(request.patientId)
        name = required_text(request.name, "name", MAX_NAME)
        email = required_text(request.email, "email", MAX_EMAIL)
        if not EMAIL.fullmatch(email):
            raise invalid("email", "must be an email address")
        row = self.store.open_account(patient_id, name, email)
        return pb.BillingResponse(accountId=row.account_id, status=row.status)

    @logged_rpc(SIGNED_IN_USERS)
    def GetBillingAccount(self, request, context):
        return account_message(self._found(self.store.get_account(parse_patient_id(request.patientId))))

    @logged_rpc(OTHER_PARTS)
    def CloseBillingAccount(self, request, context):
        return account_message(self._found(self.store.close_account(parse_patient_id(request.patientId))))

    @logged_rpc(OTHER_PARTS)
    def ListActiveAccounts(self, request, context):
        after = parse_patient_id(request.afterPatientId, "afterPatientId") if request.afterPatientId else None
        if request.pageSize > MAX_PAGE_SIZE:
            raise invalid("pageSize", f"must be at most {MAX_PAGE_SIZE}")
        patient_ids = self.store.list_active_accounts(
            timedelta(seconds=request.minAgeSeconds), after, request.pageSize or DEFAULT_PAGE_SIZE
        )
        return pb.ListActiveAccountsResponse(patientIds=[str(patient_id) for patient_id in patient_ids])

    @staticmethod
    def _found(row):
        if row is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, "no billing account for this patientId")
        return row
