"""GET /audit and /audit/verify on a real database: ADMIN only, newest
first, paginated like patients, filters checked with the field named, and
no method that could change an entry."""

import json
import uuid
from datetime import timedelta

import pytest

from audit.store import append_entries
from pms_common.identity import USER
from tests.support import client_as

from .conftest import T0, entry


@pytest.fixture
def filled(app, engine):
    with engine.begin() as connection:
        append_entries(connection, [entry(n) for n in range(1, 31)])
        append_entries(
            connection,
            [
                entry(
                    31,
                    action="UPDATE",
                    actor="admin@clinic.example",
                    actor_role="ADMIN",
                    fields=("name", "address"),
                    status=200,
                )
            ],
        )
    return app


def test_newest_first_with_every_field(client, filled):
    response = client.get("/audit?page_size=5")
    assert response.status_code == 200
    page = response.json
    assert [item["id"] for item in page] == [31, 30, 29, 28, 27]
    newest = page[0]
    assert set(newest) == {
        "id",
        "time",
        "actor",
        "actorRole",
        "action",
        "patientId",
        "requestId",
        "status",
        "clientAddress",
        "fields",
        "source",
        "prevHash",
        "hash",
    }
    assert newest["action"] == "UPDATE" and newest["fields"] == ["address", "name"]
    assert newest["time"] == (T0 + timedelta(minutes=31)).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )
    assert page[1]["fields"] is None
    pagination = json.loads(response.headers["X-Pagination"])
    assert pagination["total"] == 31 and pagination["total_pages"] == 7


def test_pages_follow_each_other(client, filled):
    second = client.get("/audit?page=2&page_size=10").json
    assert [item["id"] for item in second] == list(range(21, 11, -1))
    assert client.get("/audit?page=99&page_size=10").json == []


def test_filters(client, filled):
    patient = str(uuid.UUID(int=2))
    by_patient = client.get(f"/audit?patientId={patient}&page_size=100").json
    assert by_patient and all(item["patientId"] == patient for item in by_patient)
    assert [item["id"] for item in by_patient] == [31, 26, 21, 16, 11, 6, 1]
    by_actor = client.get("/audit?actor=admin@clinic.example").json
    assert [item["id"] for item in by_actor] == [31]
    by_action = client.get("/audit?action=READ&page_size=100").json
    assert len(by_action) == 30
    start, end = (T0 + timedelta(minutes=10)).isoformat(), (T0 + timedelta(minutes=12)).isoformat()
    window = client.get("/audit", query_string={"from": start, "to": end}).json
    assert [item["id"] for item in window] == [12, 11, 10]
    # A time without an offset is UTC.
    naive = client.get("/audit", query_string={"from": "2026-01-01T00:30:00"}).json
    assert [item["id"] for item in naive] == [31, 30]


@pytest.mark.parametrize(
    "query, field",
    [
        ({"patientId": "not-an-id"}, "patientId"),
        ({"action": "PEEK"}, "action"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"page_size": "0"}, "page_size"),
    ],
)
def test_bad_filters_are_422_naming_the_field(client, filled, query, field):
    response = client.get("/audit", query_string=query)
    assert response.status_code == 422, response.json
    assert field in json.dumps(response.json["errors"])


def test_verify(client, filled):
    assert client.get("/audit/verify").json == {"ok": True, "entries": 31}


@pytest.mark.parametrize("path", ["/audit", "/audit/verify"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_nothing_changes_an_entry(client, filled, method, path):
    response = getattr(client, method)(path, json={"id": 1})
    assert response.status_code == 405
    assert client.get("/audit/verify").json == {"ok": True, "entries": 31}


@pytest.mark.parametrize("path", ["/audit", "/audit/verify"])
def test_admins_only(app, filled, path):
    assert client_as(app, USER).get(path).status_code == 403
    assert client_as(app, None).get(path).status_code == 401


def test_openapi_document(client):
    document = client.get("/openapi.json").json
    assert [server["url"] for server in document["servers"]] == ["/api"]
    assert set(document["paths"]) == {"/audit", "/audit/verify"}
    assert set(document["paths"]["/audit"]) == {"get"}


def test_an_entry_s_hash_recomputes_from_what_the_api_shows(client, filled):
    """An auditor needs nothing but the API's answer to check a hash."""
    from datetime import datetime

    from audit.store import entry_hash

    for item in client.get("/audit?page_size=100").json:
        row = {
            "time": datetime.fromisoformat(item["time"].replace("Z", "+00:00")),
            "actor": item["actor"],
            "actor_role": item["actorRole"],
            "action": item["action"],
            "patient_id": item["patientId"],
            "request_id": item["requestId"],
            "status": item["status"],
            "client_address": item["clientAddress"],
            "fields": item["fields"],
            "source": item["source"],
        }
        assert entry_hash(item["id"], row, item["prevHash"]) == item["hash"]
