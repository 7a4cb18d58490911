"""Billing checks the caller's role itself, from the x-user-* metadata: a user
reads an account; only another part (the patient service, role SERVICE)
opens, closes or lists them."""

import uuid

import grpc
import pytest

from pms_common.identity import ADMIN, SERVICE, USER
from pms_common.protos import billing_service_pb2 as pb
from pms_common.protos import billing_service_pb2_grpc
from tests.billing.conftest import account_count, new_patient_request
from tests.support import channel_as

NEEDS = {
    "CreateBillingAccount": "service",
    "CloseBillingAccount": "service",
    "ListActiveAccounts": "service",
    "GetBillingAccount": "user",
}
REFUSED = [  # (caller's role, what the RPC needs, status)
    (None, "service", grpc.StatusCode.UNAUTHENTICATED),
    (None, "user", grpc.StatusCode.UNAUTHENTICATED),
    (USER, "service", grpc.StatusCode.PERMISSION_DENIED),
    (ADMIN, "service", grpc.StatusCode.PERMISSION_DENIED),
    (SERVICE, "user", grpc.StatusCode.PERMISSION_DENIED),
    ("ROOT", "user", grpc.StatusCode.PERMISSION_DENIED),
]


def requests_for(patient_id):
    return {
        "CreateBillingAccount": new_patient_request(patient_id),
        "CloseBillingAccount": pb.CloseBillingAccountRequest(patientId=str(patient_id)),
        "GetBillingAccount": pb.GetBillingAccountRequest(patientId=str(patient_id)),
        "ListActiveAccounts": pb.ListActiveAccountsRequest(),
    }


def stub_as(billing, role):
    return billing_service_pb2_grpc.BillingServiceStub(channel_as(billing.channel, lambda _method: role))


@pytest.mark.parametrize("role, needs, status", REFUSED)
def test_a_call_without_its_role_is_refused_and_changes_nothing(billing, store, role, needs, status):
    opened = uuid.uuid4()
    billing.stub.CreateBillingAccount(new_patient_request(opened))
    stub = stub_as(billing, role)
    for method, request in requests_for(opened).items():
        if NEEDS[method] != needs:
            continue
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, timeout=5)
        assert caught.value.code() == status, method
    for method, request in requests_for(uuid.uuid4()).items():  # a new patient: no account made
        if NEEDS[method] == needs:
            with pytest.raises(grpc.RpcError):
                getattr(stub, method)(request, timeout=5)
    assert account_count(store) == 1
    assert (
        billing.stub.GetBillingAccount(pb.GetBillingAccountRequest(patientId=str(opened))).status == "ACTIVE"
    )


def test_an_email_without_a_role_is_no_identity(billing):
    stub = billing_service_pb2_grpc.BillingServiceStub(billing.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateBillingAccount(new_patient_request(), metadata=(("x-user-role", SERVICE),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("role", [USER, ADMIN])
def test_any_signed_in_user_reads_an_account(billing, role):
    patient_id = uuid.uuid4()
    billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    account = stub_as(billing, role).GetBillingAccount(pb.GetBillingAccountRequest(patientId=str(patient_id)))
    assert account.status == "ACTIVE"


def test_the_refusal_is_logged_with_its_code(billing, caplog):
    caplog.set_level("INFO", logger="billing.service")
    with pytest.raises(grpc.RpcError):
        stub_as(billing, USER).CreateBillingAccount(new_patient_request(), timeout=5)
    outcomes = [record for record in caplog.records if getattr(record, "rpc", None) == "CreateBillingAccount"]
    assert [record.code for record in outcomes] == ["PERMISSION_DENIED"]
