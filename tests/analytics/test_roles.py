"""Analytics checks the caller's role itself: its figures are for signed-in users."""

import pytest

from pms_common.identity import ADMIN, SERVICE, USER
from tests.support import client_as

READS = ["/analytics/summary", "/analytics/registrations"]


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("caller, status", [(None, 401), (SERVICE, 403), ("GUEST", 403)])
def test_reads_without_a_signed_in_user_are_refused(sqlite_client, path, caller, status):
    response = client_as(sqlite_client.application, caller).get(path)
    assert response.status_code == status
    assert response.get_json()["code"] == status


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("caller", [USER, ADMIN])
def test_any_signed_in_user_reads(sqlite_client, path, caller):
    assert client_as(sqlite_client.application, caller).get(path).status_code == 200


def test_health_and_the_api_document_need_no_identity(sqlite_client):
    anonymous = client_as(sqlite_client.application)
    assert anonymous.get("/health/live").status_code == 200
    assert anonymous.get("/openapi.json").status_code == 200
    assert anonymous.get("/health/ready").status_code in (200, 503)  # no consumer here: the check answers
