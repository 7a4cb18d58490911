"""`DATABASE_URL=postgresql://… make run`: all four services on one PostgreSQL
database (their tables and migration version tables do not overlap)."""

from urllib.parse import urlsplit

import psutil
import pytest
import requests

from stack.harness import RunningSystem
from tests.support import fresh_database, postgres_admin_url, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not postgres_admin_url(), reason="needs PMS_TEST_POSTGRES_URL (CI sets it)")
def test_the_whole_system_on_one_postgres_database(tmp_path):
    with fresh_database("postgres", tmp_path, "stack") as url:
        system = RunningSystem(tmp_path, {"DATABASE_URL": url.replace("+psycopg", "")}).start()
        try:
            api = system.session()
            response = api.post(
                f"{system.url}/api/patients",
                timeout=10,
                json={
                    "name": "On Postgres",
                    "email": "pg@example.com",
                    "address": "5432 Port Rd",
                    "dateOfBirth": "1990-01-01",
                    "registeredDate": "2024-01-01",
                },
            )
            assert response.status_code == 201 and response.json()["billingStatus"] == "ACTIVE"
            wait_for(
                lambda: (
                    api.get(f"{system.url}/api/analytics/summary", timeout=5).json()["patientsCreated"] == 16
                ),
                timeout=30,
                message="15 seeds + 1 counted",
            )
            assert requests.get(f"{system.url}/health", timeout=5).status_code == 200
            assert_workers_do_not_share_the_masters_connections(system, urlsplit(url).port or 5432)
        finally:
            system.stop()
        import psycopg

        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            }
    assert {
        "alembic_version_patient",
        "alembic_version_auth",
        "alembic_version_billing",
        "alembic_version_analytics",
        "patients",
        "users",
        "billing_accounts",
    } <= tables


def assert_workers_do_not_share_the_masters_connections(system, database_port):
    """A web service migrates in its gunicorn master, which then forks the
    workers: a pooled connection left in the master would be shared by all of
    them (one socket, interleaved queries). The master must hold none; the
    patient workers, having served a create, hold their own."""

    def to_database(process):
        return [c for c in process.net_connections("tcp") if c.raddr and c.raddr.port == database_port]

    for service in ("patient", "auth", "analytics"):
        processes = [
            p
            for p in psutil.Process(system.process.pid).children(recursive=True)
            if p.cmdline()[1:3] == ["-m", service]
        ]
        masters = [p for p in processes if p.parent() not in processes]
        assert len(masters) == 1 and len(processes) > 1, (service, [p.cmdline() for p in processes])
        assert to_database(masters[0]) == [], service
        if service == "patient":
            assert any(to_database(worker) for worker in processes if worker not in masters)
