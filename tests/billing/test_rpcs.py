"""BillingService through a real channel, on SQLite and PostgreSQL."""

import threading
import uuid

import grpc
import pytest
import sqlalchemy as sa

from pms_common.protos import billing_service_pb2 as pb
from tests.billing.conftest import account_count, new_patient_request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


def test_create_opens_an_active_account(billing):
    patient_id = uuid.uuid4()
    response = billing.stub.CreateBillingAccount(new_patient_request(patient_id), timeout=5)
    assert response.status == "ACTIVE"
    assert response.accountId.startswith("ACC-") and len(response.accountId) == 20

    account = billing.stub.GetBillingAccount(pb.GetBillingAccountRequest(patientId=str(patient_id)))
    assert (account.accountId, account.patientId, account.status) == (
        response.accountId,
        str(patient_id),
        "ACTIVE",
    )
    assert (account.name, account.email) == ("Ada Lovelace", "ada@example.com")
    assert account.createdAt.endswith("Z") and account.closedAt == ""


def test_create_is_idempotent_on_patient_id(billing, store):
    patient_id = uuid.uuid4()
    first = billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    again = billing.stub.CreateBillingAccount(new_patient_request(patient_id, name="Other Name"))
    # The same UUID spelt differently is the same patient.
    upper = billing.stub.CreateBillingAccount(new_patient_request(str(patient_id).upper()))
    assert first.accountId == again.accountId == upper.accountId
    assert account_count(store) == 1
    account = billing.stub.GetBillingAccount(pb.GetBillingAccountRequest(patientId=str(patient_id)))
    assert account.name == "Ada Lovelace"  # a repeat does not overwrite


def test_racing_creates_make_one_account(billing, store):
    patient_id = uuid.uuid4()
    start = threading.Barrier(20)
    account_ids, errors = [], []

    def create():
        start.wait()
        try:
            account_ids.append(
                billing.stub.CreateBillingAccount(new_patient_request(patient_id), timeout=20).accountId
            )
        except grpc.RpcError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(account_ids) == 20 and len(set(account_ids)) == 1
    assert account_count(store, patient_id) == 1


def test_get_unknown_patient_is_not_found(billing):
    error = rpc_error(
        billing.stub.GetBillingAccount, pb.GetBillingAccountRequest(patientId=str(uuid.uuid4()))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


BAD_REQUESTS = [
    ("CreateBillingAccount", new_patient_request("not-a-uuid"), "patientId"),
    ("CreateBillingAccount", pb.BillingRequest(name="A", email="a@example.com"), "patientId"),
    ("CreateBillingAccount", new_patient_request(name=""), "name"),
    ("CreateBillingAccount", new_patient_request(name="   "), "name"),
    ("CreateBillingAccount", new_patient_request(name="x" * 256), "name"),
    ("CreateBillingAccount", new_patient_request(email=""), "email"),
    ("CreateBillingAccount", new_patient_request(email="not-an-email"), "email"),
    ("CreateBillingAccount", new_patient_request(email="a@b"), "email"),
    # PostgreSQL refuses NUL in text: the caller's error, not an INTERNAL one.
    ("CreateBillingAccount", new_patient_request(name="Ada\x00Lovelace"), "name"),
    ("CreateBillingAccount", new_patient_request(email="ada\x00@example.com"), "email"),
    ("GetBillingAccount", pb.GetBillingAccountRequest(patientId="12345"), "patientId"),
    ("CloseBillingAccount", pb.CloseBillingAccountRequest(patientId="x' OR 1=1"), "patientId"),
    ("ListActiveAccounts", pb.ListActiveAccountsRequest(afterPatientId="not-a-uuid"), "afterPatientId"),
    ("ListActiveAccounts", pb.ListActiveAccountsRequest(pageSize=1001), "pageSize"),
]


def test_bad_input_is_invalid_argument_naming_the_field(billing, store):
    for method, request, field in BAD_REQUESTS:
        error = rpc_error(getattr(billing.stub, method), request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
        assert error.details().startswith(f"{field}: "), (method, request, error.details())
    assert account_count(store) == 0


def test_a_request_that_does_not_parse_is_invalid_argument(billing, store):
    """A string that is not UTF-8 cannot become the message: the caller's error
    (grpc's own parsing would answer INTERNAL)."""
    raw = new_patient_request(name="AXa").SerializeToString().replace(b"AXa", b"A\xffa")
    call = billing.channel.unary_unary("/BillingService/CreateBillingAccount")
    with pytest.raises(grpc.RpcError) as caught:
        call(raw, timeout=5, metadata=(("x-user-email", "patient"), ("x-user-role", "SERVICE")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert account_count(store) == 0


def test_close_marks_the_account_closed_once(billing):
    patient_id = str(uuid.uuid4())
    opened = billing.stub.CreateBillingAccount(new_patient_request(patient_id))

    closed = billing.stub.CloseBillingAccount(pb.CloseBillingAccountRequest(patientId=patient_id))
    assert (closed.accountId, closed.status) == (opened.accountId, "CLOSED")
    assert closed.closedAt.endswith("Z") and closed.closedAt >= closed.createdAt

    again = billing.stub.CloseBillingAccount(pb.CloseBillingAccountRequest(patientId=patient_id))
    assert again == closed  # closing twice keeps the first closedAt
    shown = billing.stub.GetBillingAccount(pb.GetBillingAccountRequest(patientId=patient_id))
    assert shown == closed


def test_create_after_close_returns_the_closed_account(billing, store):
    patient_id = str(uuid.uuid4())
    opened = billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    billing.stub.CloseBillingAccount(pb.CloseBillingAccountRequest(patientId=patient_id))
    repeat = billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    assert (repeat.accountId, repeat.status) == (opened.accountId, "CLOSED")
    assert account_count(store) == 1


def test_close_unknown_patient_is_not_found(billing):
    error = rpc_error(
        billing.stub.CloseBillingAccount, pb.CloseBillingAccountRequest(patientId=str(uuid.uuid4()))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_each_call_is_one_statement_on_connections_that_stay_in_autocommit(billing, store):
    """Billing's every write is one statement, atomic by itself: its pool's
    connections stay in autocommit (no BEGIN/COMMIT round trips) and are not
    switched at checkout and back at checkin."""
    statements = []
    sa.event.listen(
        store.engine,
        "before_cursor_execute",
        lambda _conn, _cursor, statement, *_: statements.append(statement),
    )
    billing.stub.CreateBillingAccount(new_patient_request())
    assert len(statements) == 1 and statements[0].startswith("INSERT INTO billing_accounts")
    with store.engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        if store.engine.dialect.name == "postgresql":
            assert dbapi_connection.autocommit is True
        else:
            assert dbapi_connection.isolation_level is None  # sqlite3's autocommit
