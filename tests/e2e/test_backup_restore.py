"""The README's backup and restore, done for real: a running system's
PostgreSQL database dumped with pg_dump, restored with pg_restore into an
empty database, and the system started on it serves the same records."""

import shutil
import subprocess
import uuid

import pytest

from stack.harness import RunningSystem
from tests.support import fresh_database, postgres_admin_url, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not postgres_admin_url(), reason="needs PMS_TEST_POSTGRES_URL (CI sets it)"),
]


def plain(url):
    return url.replace("+psycopg", "")


def test_a_dump_restored_into_an_empty_database_is_served(tmp_path):
    assert shutil.which("pg_dump") and shutil.which("pg_restore")
    email = f"restore-{uuid.uuid4().hex[:8]}@example.com"
    with fresh_database("postgres", tmp_path, "backup") as original:
        system = RunningSystem(tmp_path / "before", {"DATABASE_URL": plain(original)})
        (tmp_path / "before").mkdir()
        system.start()
        try:
            api = system.session()
            created = api.post(
                f"{system.url}/api/patients",
                timeout=10,
                json={
                    "name": "Restored Patient",
                    "email": email,
                    "address": "1 Backup Way",
                    "dateOfBirth": "1970-01-01",
                    "registeredDate": "2024-01-01",
                },
            )
            assert created.status_code == 201, created.text
            patient_id = created.json()["id"]
            wait_for(
                lambda: (
                    api.get(f"{system.url}/api/analytics/summary", timeout=5).json()["patientsCreated"] == 16
                ),
                timeout=30,
                message="15 seeds and the new patient counted",
            )
            dump = tmp_path / "pms.dump"
            subprocess.run(
                ["pg_dump", "--format=custom", f"--file={dump}", plain(original)], check=True, timeout=120
            )
        finally:
            system.stop()

    with fresh_database("postgres", tmp_path, "restored") as restored:
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={plain(restored)}", str(dump)], check=True, timeout=120
        )
        (tmp_path / "after").mkdir()
        system = RunningSystem(tmp_path / "after", {"DATABASE_URL": plain(restored)}).start()
        try:
            api = system.session()
            patient = api.get(f"{system.url}/api/patients/{patient_id}", timeout=10)
            assert patient.status_code == 200 and patient.json()["email"] == email
            account = api.get(f"{system.url}/api/billing/accounts/{patient_id}", timeout=10)
            assert account.status_code == 200 and account.json()["status"] == "ACTIVE"
            wait_for(
                lambda: (
                    api.get(f"{system.url}/api/analytics/summary", timeout=5).json()["patientsCreated"] >= 16
                ),
                timeout=30,
                message="the restored figures",
            )
        finally:
            system.stop()
