"""The analytics API on each real database: figures, validation, health, docs."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from analytics import create_app, store
from analytics.extensions import db
from pms_common.events import CREATED, DELETED, decode
from pms_common.models import utcnow

from .conftest import make_config
from .helpers import patient_event

REPO = Path(__file__).resolve().parents[2]


def count(app, *events):
    with app.app_context(), db.engine.begin() as connection:
        store.apply_events(connection, [decode(event.SerializeToString()) for event in events])


def heartbeat(app, age_seconds=0.0):
    with app.app_context(), db.engine.begin() as connection:
        store.write_heartbeat(
            connection,
            app.config["CONSUMER_GROUP"],
            "test:1",
            error="broker down",
            now=utcnow() - timedelta(seconds=age_seconds),
        )


def test_summary_starts_at_zero(client):
    assert client.get("/analytics/summary").get_json() == {
        "patientsCreated": 0,
        "patientsUpdated": 0,
        "patientsDeleted": 0,
        "activePatients": 0,
        "eventsProcessed": 0,
        "lastEventAt": None,
    }


def test_summary_shows_the_counted_events(app, client):
    created = patient_event(CREATED, occurred_at="2024-04-02T09:30:00.250+02:00")
    count(
        app,
        created,
        patient_event(CREATED, occurred_at="2024-04-01T00:00:00Z"),
        patient_event(DELETED, created.patientId, occurred_at="2024-04-02T07:00:00Z"),
    )
    assert client.get("/analytics/summary").get_json() == {
        "patientsCreated": 2,
        "patientsUpdated": 0,
        "patientsDeleted": 1,
        "activePatients": 1,
        "eventsProcessed": 3,
        "lastEventAt": "2024-04-02T07:30:00.250000Z",
    }


def test_registrations_are_listed_by_month_and_filtered(app, client):
    count(
        app,
        *[
            patient_event(CREATED, registered_date=day)
            for day in ("2024-03-01", "2023-11-20", "2024-01-09", "2024-01-10", "2024-03-31")
        ],
    )
    assert client.get("/analytics/registrations").get_json() == [
        {"month": "2023-11", "count": 1},
        {"month": "2024-01", "count": 2},
        {"month": "2024-03", "count": 2},
    ]
    assert client.get("/analytics/registrations?from=2024-01&to=2024-02").get_json() == [
        {"month": "2024-01", "count": 2}
    ]
    assert client.get("/analytics/registrations?from=2024-02").get_json() == [
        {"month": "2024-03", "count": 2}
    ]
    assert client.get("/analytics/registrations?to=2023-12").get_json() == [{"month": "2023-11", "count": 1}]


@pytest.mark.parametrize(
    "query, field",
    [
        ("from=2024-13", "from"),
        ("from=2024-1", "from"),
        ("to=January", "to"),
        ("to=2024-01-01", "to"),
        ("from=2024-05&to=2024-04", "to"),
    ],
)
def test_bad_months_are_422_naming_the_field(sqlite_client, query, field):
    response = sqlite_client.get(f"/analytics/registrations?{query}")
    assert response.status_code == 422
    body = response.get_json()
    assert (body["code"], body["status"]) == (422, "Unprocessable Entity")
    assert list(body["errors"]["query"]) == [field]


def test_unknown_paths_and_methods_answer_json_errors(sqlite_client):
    assert sqlite_client.get("/analytics/nothing").get_json()["code"] == 404
    assert sqlite_client.post("/analytics/summary").status_code == 405


def test_ready_needs_a_fresh_consumer_heartbeat(app, client):
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "UP"
    assert "no heartbeat" in response.get_json()["checks"]["consumer"]

    heartbeat(app)
    assert client.get("/health/ready").status_code == 200

    heartbeat(app, age_seconds=app.config["CONSUMER_STALE_SECONDS"] + 1)
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert "last error: broker down" in response.get_json()["checks"]["consumer"]
    assert client.get("/health/live").status_code == 200


def test_ready_is_down_when_the_database_is_gone(tmp_path):
    app = create_app(make_config(f"sqlite:///{tmp_path / 'gone' / 'missing.db'}"))
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"].startswith("DOWN")


def test_openapi_declares_gateway_server_bearer_auth_and_both_paths(sqlite_client):
    spec = sqlite_client.get("/openapi.json").get_json()
    assert spec["servers"] == [{"url": "/api", "description": "through the gateway"}]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert spec["security"] == [{"bearerAuth": []}]
    assert {"/analytics/summary", "/analytics/registrations"} <= set(spec["paths"])
    parameters = {p["name"] for p in spec["paths"]["/analytics/registrations"]["get"]["parameters"]}
    assert parameters == {"from", "to"}


def test_concurrent_upgrades_of_a_fresh_database_both_succeed(database_url):
    script = (
        "import sys; from analytics import create_app, MIGRATIONS_DIR; from analytics.config import Config;"
        "from pms_common.serve import migrate_and_seed;"
        "migrate_and_seed(create_app(Config(DATABASE_URL=sys.argv[1])), MIGRATIONS_DIR)"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url], cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    failures = [run.stderr.read() for run in runs if run.wait(60) != 0]
    assert not failures, failures[0]
