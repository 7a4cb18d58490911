"""ListActiveAccounts: the patient service's reconciliation pages through the
ACTIVE accounts that are old enough to have their patient by now, on SQLite
and PostgreSQL."""

import uuid
from datetime import timedelta

import sqlalchemy as sa

from billing.store import accounts
from pms_common.models import utcnow
from pms_common.protos import billing_service_pb2 as pb
from tests.billing.conftest import new_patient_request

AN_HOUR = 3600


def open_accounts(billing, count):
    patient_ids = [uuid.uuid4() for _ in range(count)]
    for patient_id in patient_ids:
        billing.stub.CreateBillingAccount(new_patient_request(patient_id))
    return patient_ids


def opened_ago(store, patient_ids, seconds):
    with store.engine.connect() as connection:
        connection.execute(
            sa.update(accounts)
            .where(accounts.c.patient_id.in_(patient_ids))
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


def listed(billing, min_age_seconds, page_size):
    """Every page in turn; returns the pages."""
    pages, after = [], ""
    while True:
        page = billing.stub.ListActiveAccounts(
            pb.ListActiveAccountsRequest(
                minAgeSeconds=min_age_seconds, afterPatientId=after, pageSize=page_size
            )
        ).patientIds
        pages.append(list(page))
        if len(page) < page_size:
            return pages
        after = page[-1]


def test_pages_through_the_active_accounts_old_enough_in_patient_order(billing, store):
    old = open_accounts(billing, 5)
    young = open_accounts(billing, 2)
    closed = old.pop()
    billing.stub.CloseBillingAccount(pb.CloseBillingAccountRequest(patientId=str(closed)))
    opened_ago(store, [*old, closed], 2 * AN_HOUR)

    pages = listed(billing, AN_HOUR, page_size=3)
    assert [len(page) for page in pages] == [3, 1]
    listed_ids = [uuid.UUID(patient_id) for page in pages for patient_id in page]
    assert listed_ids == sorted(old)

    # No age and no page size: every ACTIVE account, in a page of the default size.
    everything = billing.stub.ListActiveAccounts(pb.ListActiveAccountsRequest()).patientIds
    assert [uuid.UUID(patient_id) for patient_id in everything] == sorted(old + young)


def test_no_accounts_is_one_empty_page(billing):
    assert listed(billing, 0, page_size=10) == [[]]
