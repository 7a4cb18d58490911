"""Patient data must not stay in a browser's or a proxy's cache: every
response of the Flask services says `Cache-Control: no-store`, unless a view
chose its own (the shared wiring, pms_common.web)."""

import uuid

import pytest
from flask import Flask

import analytics
import patient
from analytics.config import Config as AnalyticsConfig
from analytics.extensions import db as analytics_db
from patient.config import Config as PatientConfig
from patient.extensions import db as patient_db
from pms_common.identity import ADMIN
from pms_common.web import init_request_context
from tests.patient.conftest import VALID
from tests.support import client_as, free_port, migrated_apps


@pytest.fixture
def patient_client(tmp_path):
    with migrated_apps(patient.create_app, patient.MIGRATIONS_DIR, patient_db, role=ADMIN) as build:
        yield build(
            PatientConfig(
                DATABASE_URL=f"sqlite:///{tmp_path / 'patient.db'}",
                DATA_DIR=str(tmp_path / "data"),
                BILLING_ADDRESS=f"127.0.0.1:{free_port()}",
                BILLING_TIMEOUT_SECONDS=0.2,
            )
        ).test_client()


def test_every_patient_response_says_no_store(patient_client):
    created = patient_client.post("/patients", json=VALID)
    url = f"/patients/{created.get_json()['id']}"
    responses = {
        "create": created,
        "list": patient_client.get("/patients"),
        "get": patient_client.get(url),
        "not modified": patient_client.get(
            url, headers={"If-None-Match": patient_client.get(url).headers["ETag"]}
        ),
        "update": patient_client.put(
            url, json={k: VALID[k] for k in ("name", "email", "address", "dateOfBirth")}
        ),
        "invalid": patient_client.post("/patients", json={}),
        "not found": patient_client.get(f"/patients/{uuid.uuid4()}"),
        "no identity": client_as(patient_client.application).get(url),
        "delete": patient_client.delete(url),
        "api document": patient_client.get("/openapi.json"),
    }
    for name, response in responses.items():
        assert response.headers.get("Cache-Control") == "no-store", name


def test_analytics_responses_say_no_store(tmp_path):
    with migrated_apps(analytics.create_app, analytics.MIGRATIONS_DIR, analytics_db, role=ADMIN) as build:
        client = build(
            AnalyticsConfig(
                DATABASE_URL=f"sqlite:///{tmp_path / 'analytics.db'}", DATA_DIR=str(tmp_path / "data")
            )
        ).test_client()
        for path in ("/analytics/summary", "/analytics/registrations", "/analytics/registrations?from=x"):
            assert client.get(path).headers.get("Cache-Control") == "no-store", path


def test_a_view_that_sets_its_own_cache_control_keeps_it():
    app = Flask(__name__)
    init_request_context(app)
    app.add_url_rule("/public", "public", lambda: ("same for everyone", 200, {"Cache-Control": "max-age=60"}))
    app.add_url_rule("/private", "private", lambda: "patient data")
    client = app.test_client()
    assert client.get("/public").headers["Cache-Control"] == "max-age=60"
    assert client.get("/private").headers["Cache-Control"] == "no-store"
