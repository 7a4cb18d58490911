"""The data folder and SQLite's files hold patient records and the dev
signing key: the folder is its owner's only (0700), the database files too (0600)."""

import os
import stat

import pytest

import analytics
import patient
from analytics.config import Config as AnalyticsConfig
from analytics.extensions import db as analytics_db
from billing.config import Config as BillingConfig
from billing.store import Store
from patient.config import Config as PatientConfig
from patient.extensions import db as patient_db
from pms_common.identity import ADMIN
from tests.patient.conftest import VALID
from tests.support import free_port, migrated_apps


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def database_files(folder, name):
    return [folder / (name + suffix) for suffix in ("", "-wal", "-shm")]


@pytest.fixture(params=["new", "loose"])
def data_dir(request, tmp_path):
    """A data folder that does not exist yet, or one (with a database) that others may read."""
    folder = tmp_path / "data"
    if request.param == "loose":
        folder.mkdir(mode=0o755)
        folder.chmod(0o755)
        for service in ("patient", "analytics", "billing"):
            for path in database_files(folder, f"{service}.db"):
                path.touch()
                path.chmod(0o644)
    return folder


def test_patient_and_analytics_keep_their_files_private(data_dir, monkeypatch):
    monkeypatch.setenv("PMS_DATA_DIR", str(data_dir))
    for name in ("DATABASE_URL", "PATIENT_DATABASE_URL", "ANALYTICS_DATABASE_URL", "DB_HOST"):
        monkeypatch.delenv(name, raising=False)
    with migrated_apps(patient.create_app, patient.MIGRATIONS_DIR, patient_db, role=ADMIN) as build:
        app = build(PatientConfig(BILLING_ADDRESS=f"127.0.0.1:{free_port()}", BILLING_TIMEOUT_SECONDS=0.2))
        assert app.test_client().post("/patients", json=VALID).status_code == 201  # WAL in use
        with migrated_apps(analytics.create_app, analytics.MIGRATIONS_DIR, analytics_db) as build_analytics:
            config = AnalyticsConfig()
            config.ensure_data_dir()  # as `python -m analytics` and its consumer do first
            build_analytics(config)
            assert mode(data_dir) == 0o700
            for path in database_files(data_dir, "patient.db") + database_files(data_dir, "analytics.db"):
                assert mode(path) == 0o600, path


def test_billing_keeps_its_files_private(data_dir, monkeypatch):
    monkeypatch.setenv("PMS_DATA_DIR", str(data_dir))
    for name in ("DATABASE_URL", "BILLING_DATABASE_URL", "DB_HOST"):
        monkeypatch.delenv(name, raising=False)
    config = BillingConfig()
    config.ensure_data_dir()  # as `python -m billing` does first
    store = Store(config.DATABASE_URL)
    try:
        store.migrate()
        store.check()
        assert mode(data_dir) == 0o700
        for path in database_files(data_dir, "billing.db"):
            assert mode(path) == 0o600, path
    finally:
        store.dispose()


def test_a_database_folder_outside_the_data_folder_is_made_private_but_an_existing_one_left_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    PatientConfig(
        DATA_DIR=str(tmp_path / "data"), DATABASE_URL=f"sqlite:///{shared / 'patient.db'}"
    ).ensure_data_dir()
    PatientConfig(
        DATA_DIR=str(tmp_path / "data"), DATABASE_URL=f"sqlite:///{tmp_path / 'made' / 'patient.db'}"
    ).ensure_data_dir()
    assert mode(shared) == 0o755 and mode(shared / "patient.db") == 0o600
    assert mode(tmp_path / "made") == 0o700
