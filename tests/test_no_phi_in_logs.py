"""No patient data in the logs of patient and billing, even when PostgreSQL
refuses a write: SQL parameters are hidden (hide_parameters) and a database
error is logged by class and SQLSTATE, never by its text, which quotes row
values (`Key (email)=(...) already exists`, `Failing row contains (...)`)."""

import uuid

import grpc
import psycopg
import pytest
import sqlalchemy as sa

import patient
from billing.store import Store
from patient.config import Config as PatientConfig
from patient.extensions import db as patient_db
from pms_common.db import engine_options
from pms_common.identity import SERVICE
from pms_common.logs import JsonFormatter
from pms_common.protos import billing_service_pb2 as pb
from pms_common.protos import billing_service_pb2_grpc
from tests.patient.conftest import BillingServer
from tests.support import channel_as, fresh_database, migrated_apps, postgres_admin_url

pytestmark = pytest.mark.skipif(
    not postgres_admin_url(), reason="PostgreSQL tests run when PMS_TEST_POSTGRES_URL is set (CI sets it)"
)

PATIENT = {
    "name": "Zelda Phiby",
    "email": "zelda.phiby@example.com",
    "address": "7 Hidden Lane, Tarrow",
    "dateOfBirth": "1971-03-14",
    "registeredDate": "2024-05-01",
}
REFUSED = {
    "name": "Yorick Refusal",
    "email": "yorick.refusal@example.com",
    "address": "9 Refusal Row",
    "dateOfBirth": "1969-07-20",
    "registeredDate": "2024-05-01",
}
SECRETS = [
    value for person in (PATIENT, REFUSED) for key, value in person.items() if key != "registeredDate"
] + ["zelda.phiby", "Refusal Row"]

# Stands for any error whose text quotes the row, as PostgreSQL's own
# constraint errors do; ERRCODE 22023 makes it a DataError.
REFUSE_ROWS = """
CREATE FUNCTION refuse_marked_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.address LIKE '%Refusal Row%' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'refused: ' || NEW.name,
      DETAIL = format('Failing row contains (%s, %s, %s, %s).',
                      NEW.name, NEW.email, NEW.address, NEW.date_of_birth);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_marked_rows BEFORE INSERT OR UPDATE ON patients
  FOR EACH ROW EXECUTE FUNCTION refuse_marked_rows();
"""


@pytest.fixture
def database(tmp_path):
    with fresh_database("postgres", tmp_path, "phi") as url:
        yield url


@pytest.fixture
def system(database, tmp_path):
    """Patient and billing on one PostgreSQL database."""
    billing = BillingServer(database).start()
    with migrated_apps(patient.create_app, patient.MIGRATIONS_DIR, patient_db, role="ADMIN") as build:
        app = build(
            PatientConfig(
                DATABASE_URL=database,
                DATA_DIR=str(tmp_path / "data"),
                BILLING_ADDRESS=billing.address,
                BILLING_TIMEOUT_SECONDS=5.0,
            )
        )
        with psycopg.connect(
            database.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        ) as conn:
            conn.execute(REFUSE_ROWS)
        try:
            yield app, billing
        finally:
            billing.stop()
            billing.store.dispose()


def logged_text(caplog):
    """Every captured line as the JSON handler writes it, tracebacks included."""
    formatter = JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


def assert_no_patient_data(text):
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} in the logs:\n{text}"


def test_failed_writes_on_patient_log_no_patient_data(system, caplog):
    app, _billing = system
    caplog.set_level("DEBUG")
    client = app.test_client()
    created = client.post("/patients", json=PATIENT)
    assert created.status_code == 201 and created.get_json()["billingStatus"] == "ACTIVE"
    patient_id = created.get_json()["id"]

    assert client.post("/patients", json={**PATIENT, "name": "Other Name"}).status_code == 409
    assert (
        client.post(
            "/patients", json={**PATIENT, "email": "other@example.com", "name": PATIENT["name"] + "\u0000"}
        ).status_code
        == 422
    )
    # The database refuses the row: a DataError, answered 422, logged without its text.
    assert client.post("/patients", json=REFUSED).status_code == 422
    update = {k: PATIENT[k] for k in ("name", "email", "dateOfBirth")}
    assert (
        client.put(f"/patients/{patient_id}", json={**update, "address": REFUSED["address"]}).status_code
        == 422
    )
    assert (
        client.get("/patients", query_string={"name": "zelda", "email": PATIENT["email"]}).status_code == 200
    )
    assert client.get(f"/patients/{patient_id}").get_json()["address"] == PATIENT["address"]

    refusals = [record for record in caplog.records if getattr(record, "sqlstate", None) == "22023"]
    assert len(refusals) == 2 and {record.error for record in refusals} == {"InvalidParameterValue"}
    assert_no_patient_data(logged_text(caplog))


def test_failed_writes_on_billing_log_no_patient_data(system, database, caplog):
    _app, billing = system
    caplog.set_level("DEBUG")
    stub = billing_service_pb2_grpc.BillingServiceStub(
        channel_as(grpc.insecure_channel(billing.address), lambda _method: SERVICE)
    )

    def create(name=PATIENT["name"], email=PATIENT["email"]):
        return stub.CreateBillingAccount(
            pb.BillingRequest(patientId=str(uuid.uuid4()), name=name, email=email), timeout=5
        )

    assert create().status == "ACTIVE"
    with billing.store.engine.begin() as connection:
        # A rule billing does not have, so that PostgreSQL refuses a duplicate email in its words.
        connection.execute(sa.text("CREATE UNIQUE INDEX billing_email_once ON billing_accounts (email)"))
    with pytest.raises(grpc.RpcError) as duplicate:
        create(name="Other Name")
    assert duplicate.value.code() == grpc.StatusCode.INTERNAL
    with pytest.raises(grpc.RpcError) as nul:
        create(name=PATIENT["name"] + "\u0000", email="other@example.com")
    assert nul.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    failures = [record for record in caplog.records if getattr(record, "sqlstate", None) == "23505"]
    assert [record.error for record in failures] == ["UniqueViolation"]
    assert_no_patient_data(logged_text(caplog))


def test_every_engine_hides_sql_parameters(system, database):
    app, billing = system
    assert engine_options("sqlite:///x.db")["hide_parameters"] is True
    assert engine_options(database)["hide_parameters"] is True
    with app.app_context():
        assert all(engine.hide_parameters for engine in patient_db.engines.values())
        assert len(patient_db.engines) == 2  # the ORM's and the autocommit bind of creates
    assert billing.store.engine.hide_parameters
    store = Store(database)
    try:
        assert store.engine.hide_parameters
    finally:
        store.dispose()
