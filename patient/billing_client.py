"""Opening a patient's billing account over gRPC, now or on a later retry."""

import logging
import threading
from datetime import timedelta

import grpc
import sqlalchemy as sa

from pms_common import telemetry
from pms_common.identity import ROLE_HEADER, SERVICE, USER_HEADER
from pms_common.logs import request_id_var
from pms_common.models import utcnow
from pms_common.protos import billing_service_pb2, billing_service_pb2_grpc

from .extensions import db
from .models import BILLING_ACTIVE, BILLING_PENDING, Patient

log = logging.getLogger(__name__)
# Retries start this soon after a failed attempt and double up to the configured maximum.
FIRST_RETRY_SECONDS = 1.0
# Reconnect soon after billing comes back (gRPC's default backoff grows to 2 minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30000),
]
# The reconciliation's listing may take longer than a create's call: no request waits on it.
LIST_TIMEOUT_SECONDS = 10.0
# Billing opens, closes and lists accounts only for another part of the system.
CALLER_METADATA = ((USER_HEADER.lower(), "patient"), (ROLE_HEADER.lower(), SERVICE))


class BillingClient:
    """One channel per process, made on first use (gRPC channels must not
    cross a fork, and gunicorn forks after the app is built)."""

    def __init__(self, address, timeout_seconds):
        self.address = address
        self.timeout_seconds = timeout_seconds
        # (plain, traced): one channel, with and without the tracing interceptor.
        self._stubs = None
        self._lock = threading.Lock()

    def _stub_and_metadata(self):
        """The stub and metadata of a call: through the tracing interceptor
        while the work in hand is traced (it adds the span's traceparent);
        else plain, with the trace's traceparent if there is one, so that
        billing's log lines carry its id."""
        with self._lock:
            if self._stubs is None:
                channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
                self._stubs = tuple(
                    billing_service_pb2_grpc.BillingServiceStub(each)
                    for each in (channel, telemetry.traced_channel(channel))
                )
            plain, traced = self._stubs
        request_id = request_id_var.get()
        metadata = (*CALLER_METADATA, ("x-request-id", request_id)) if request_id else CALLER_METADATA
        if telemetry.instrumentation_on():
            return traced, metadata
        traceparent = telemetry.current_traceparent()
        return plain, ((*metadata, (telemetry.TRACEPARENT, traceparent)) if traceparent else metadata)

    def open_account(self, patient_id, name, email):
        """Returns the account id; raises grpc.RpcError when billing fails or is slow."""
        stub, metadata = self._stub_and_metadata()
        response = stub.CreateBillingAccount(
            billing_service_pb2.BillingRequest(patientId=str(patient_id), name=name, email=email),
            timeout=self.timeout_seconds,
            metadata=metadata,
        )
        return response.accountId

    def close_account(self, patient_id):
        """Raises grpc.RpcError when billing fails or is slow (NOT_FOUND: no account)."""
        stub, metadata = self._stub_and_metadata()
        stub.CloseBillingAccount(
            billing_service_pb2.CloseBillingAccountRequest(patientId=str(patient_id)),
            timeout=self.timeout_seconds,
            metadata=metadata,
        )

    def list_active_accounts(self, min_age_seconds, after_patient_id, page_size):
        """Patient ids of a page of ACTIVE accounts opened at least
        min_age_seconds ago, after after_patient_id ("" for the first page);
        raises grpc.RpcError when billing fails or is slow."""
        stub, metadata = self._stub_and_metadata()
        response = stub.ListActiveAccounts(
            billing_service_pb2.ListActiveAccountsRequest(
                minAgeSeconds=int(min_age_seconds), afterPatientId=after_patient_id, pageSize=page_size
            ),
            timeout=LIST_TIMEOUT_SECONDS,
            metadata=metadata,
        )
        return list(response.patientIds)


def ask_for_account(client, patient_id, name, email):
    """Asks billing once: the account id, or None when billing failed or was
    slow (the caller records a retry). Never raises for a billing failure."""
    try:
        return client.open_account(patient_id, name, email)
    except grpc.RpcError as exc:
        log.warning(
            "billing account not opened yet; will retry",
            extra={"patient_id": str(patient_id), "grpc_status": exc.code().name},
        )
        return None


def next_attempt_at(attempts_so_far, retry_max_seconds):
    return utcnow() + timedelta(seconds=min(retry_max_seconds, FIRST_RETRY_SECONDS * 2**attempts_so_far))


def try_open_account(client, patient_id, name, email, retry_max_seconds):
    """The worker's retry for an existing PENDING patient: asks billing and
    records the outcome on the row, the account id or when to try again."""
    account_id = ask_for_account(client, patient_id, name, email)
    if account_id is None:
        patient = db.session.get(Patient, patient_id)
        if patient is not None and patient.billing_status == BILLING_PENDING:
            db.session.execute(
                sa.update(Patient)
                .where(Patient.id == patient_id)
                .values(
                    billing_attempts=Patient.billing_attempts + 1,
                    billing_next_attempt_at=next_attempt_at(patient.billing_attempts, retry_max_seconds),
                )
                .execution_options(synchronize_session=False)
            )
            db.session.commit()
        return None
    # A plain UPDATE, not the ORM: the billing fields are not the client's edit,
    # so they must not bump the version a client's If-Match was read against.
    db.session.execute(
        sa.update(Patient)
        .where(Patient.id == patient_id)
        .values(billing_account_id=account_id, billing_status=BILLING_ACTIVE, billing_next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return account_id


def retry_pending_accounts(client, retry_max_seconds, limit=50):
    """Opens accounts for patients whose billing is still pending and due."""
    due = db.session.execute(
        sa.select(Patient.id, Patient.name, Patient.email)
        .where(
            Patient.billing_status == BILLING_PENDING,
            sa.or_(Patient.billing_next_attempt_at.is_(None), Patient.billing_next_attempt_at <= utcnow()),
        )
        .order_by(Patient.billing_next_attempt_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    opened = 0
    for patient_id, name, email in due:
        if try_open_account(client, patient_id, name, email, retry_max_seconds):
            opened += 1
    return opened, len(due)
