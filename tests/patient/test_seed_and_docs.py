"""The dev seed (the Java original's 15 patients) and the OpenAPI document."""

import csv
from pathlib import Path

import sqlalchemy as sa

from patient.extensions import db
from patient.models import OutboxEvent
from patient.seed import seed_patients

REFERENCE = Path(__file__).resolve().parents[2] / "patient" / "seed_patients.csv"


def test_seed_has_the_originals_patients_and_is_idempotent(app):
    with app.app_context():
        seed_patients(app)
        seed_patients(app)
        events = db.session.scalar(sa.select(sa.func.count()).select_from(OutboxEvent))
    rows = app.test_client().get("/patients", query_string={"page_size": 100}).get_json()
    with REFERENCE.open() as handle:
        expected = {row["id"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 15 and events == 15
    for row in rows:
        original = expected[row["id"]]
        assert (row["name"], row["email"], row["address"], row["dateOfBirth"], row["registeredDate"]) == (
            original["name"],
            original["email"],
            original["address"],
            original["dateOfBirth"],
            original["registeredDate"],
        )
    assert expected["123e4567-e89b-12d3-a456-426614174000"]["name"] == "John Doe"
    assert expected["223e4567-e89b-12d3-a456-426614174014"]["name"] == "Isabella Walker"


def test_production_seeds_nothing(make_app):
    app = make_app(ENV="production")
    with app.app_context():
        seed_patients(app)
    assert app.test_client().get("/patients").get_json() == []


def test_openapi_describes_every_endpoint_parameter_and_error(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["servers"] == [{"url": "/api", "description": "through the gateway"}]
    paths = spec["paths"]
    assert {path for path in paths if not path.startswith("/fhir/")} == {
        "/patients",
        "/patients/{patient_id}",
    }
    assert set(paths["/patients"]) >= {"get", "post"}
    assert set(paths["/patients/{patient_id}"]) >= {"get", "put", "delete"}
    list_params = {p["name"] for p in paths["/patients"]["get"]["parameters"]}
    assert list_params >= {"page", "page_size", "name", "email", "sort"}
    assert {"201", "409", "422"} <= set(paths["/patients"]["post"]["responses"])
    assert {"200", "404", "409", "412", "422"} <= set(paths["/patients/{patient_id}"]["put"]["responses"])
    assert {"204", "404"} <= set(paths["/patients/{patient_id}"]["delete"]["responses"])
    schema = spec["components"]["schemas"]["Patient"]
    assert set(schema["required"]) == {"name", "email", "address", "dateOfBirth", "registeredDate"}
    assert schema["properties"]["name"]["maxLength"] == 100
    assert "bearerAuth" in spec["components"]["securitySchemes"]
