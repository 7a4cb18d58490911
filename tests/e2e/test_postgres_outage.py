"""The database away for six minutes under load, as an operator would meet it:
a PostgreSQL cluster of the test's own, stopped and started again. No part
gives up, the launcher names each part that waits and says when it works
again, and within 30 s of the database's return everything caught up without
a restart by hand."""

import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from stack.harness import RunningSystem, free_port
from tests.e2e.conftest import supervisorctl
from tests.e2e.test_faults import launcher_says
from tests.support import wait_for

OUTAGE_SECONDS = 360
RECOVERY_SECONDS = 30
POSTGRES_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not POSTGRES_BIN, reason="needs Debian's PostgreSQL server binaries"),
]


class PrivatePostgres:
    """A PostgreSQL cluster in a folder of its own on a free port; initdb
    refuses root, so as root it runs as the postgres user."""

    def __init__(self):
        self.bin = Path(POSTGRES_BIN[-1])
        self.folder = Path(tempfile.mkdtemp(prefix="pms-outage-pg-"))
        self.port = free_port()
        self.as_owner = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, program, *arguments):
        subprocess.run(
            [*self.as_owner, str(self.bin / program), *arguments],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def init(self):
        self.run("initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        return self

    def start(self):
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=300"
        self.run(
            "pg_ctl",
            "-D",
            str(self.folder / "data"),
            "-l",
            str(self.folder / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self, mode="fast"):
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    def remove(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)

    def count(self, query, *parameters):
        with psycopg.connect(self.url, connect_timeout=3) as connection:
            return connection.execute(query, parameters).fetchone()[0]


@pytest.fixture
def postgres():
    cluster = PrivatePostgres().init()
    cluster.start()
    yield cluster
    cluster.remove()


class Load:
    """Creates (and now and then a delete of one of them) from a few threads,
    at a steady pace whatever the answers."""

    def __init__(self, system, api, threads=2, pause=0.1):
        self.system, self.api, self.pause = system, api, pause
        self.created, self.deleted, self.statuses = [], [], []  # deleted: created ids since deleted
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc):
        self.stopped.set()
        for thread in self.threads:
            thread.join()

    def run(self, worker):
        mine = []
        while not self.stopped.is_set():
            if len(mine) >= 5:
                response = self.request("delete", f"/api/patients/{mine[0]}")
                if response is not None and response.status_code in (204, 404):  # 404: an earlier try did it
                    self.deleted.append(mine.pop(0))
            else:
                patient = {
                    "name": f"Outage {worker}",
                    "email": f"outage-{uuid.uuid4().hex[:12]}@example.com",
                    "address": "5432 Port Rd",
                    "dateOfBirth": "1970-01-01",
                    "registeredDate": "2024-01-01",
                }
                response = self.request("post", "/api/patients", json=patient)
                if response is not None and response.status_code == 201:
                    self.created.append(response.json()["id"])
                    mine.append(self.created[-1])
            self.stopped.wait(self.pause)

    def request(self, method, path, **arguments):
        try:
            response = self.api.request(method, f"{self.system.url}{path}", timeout=20, **arguments)
        except requests.RequestException:
            self.statuses.append(599)
            return None
        self.statuses.append(response.status_code)
        return response


@pytest.mark.timeout(OUTAGE_SECONDS + 600)
def test_after_six_minutes_without_the_database_every_part_catches_up_by_itself(tmp_path, postgres):
    system = RunningSystem(tmp_path, {"DATABASE_URL": postgres.url}).start()
    try:
        api = system.session()
        with Load(system, api) as load:
            time.sleep(20)
            said_before = len(system.output)
            postgres.stop()
            back_at = time.monotonic() + OUTAGE_SECONDS
            for part in ("patient-worker", "patient", "analytics"):
                launcher_says(system, said_before, part, "not doing its work", "database")
            time.sleep(max(0.0, back_at - time.monotonic()))
            postgres.start()
            restarted = time.monotonic()
        assert len(load.created) > 50 and load.deleted

        left = {}

        def created_again():
            patient = {
                "name": "After The Outage",
                "email": f"after-{uuid.uuid4().hex[:12]}@example.com",
                "address": "1 Return Rd",
                "dateOfBirth": "1970-01-01",
                "registeredDate": "2024-01-01",
            }
            return api.post(f"{system.url}/api/patients", json=patient, timeout=10).status_code == 201

        def caught_up():
            left["unpublished"] = postgres.count(
                "SELECT count(*) FROM outbox_events WHERE published_at IS NULL"
            )
            left["pending accounts"] = postgres.count(
                "SELECT count(*) FROM patients WHERE billing_status = 'PENDING'"
            )
            left["uncounted"] = postgres.count(
                "SELECT count(*) FROM outbox_events o WHERE NOT EXISTS (SELECT 1 FROM "
                "analytics_processed_events p WHERE p.event_id = o.event_id::text)"
            )
            left["open accounts of deleted patients"] = postgres.count(
                "SELECT count(*) FROM billing_accounts WHERE status <> 'CLOSED' "
                "AND patient_id = ANY(%s::uuid[])",
                load.deleted,
            )
            return not any(left.values())

        def remaining():
            return RECOVERY_SECONDS - (time.monotonic() - restarted)

        wait_for(created_again, timeout=remaining(), interval=1, message="a create to succeed again")
        try:
            wait_for(caught_up, timeout=remaining(), interval=1)
        except AssertionError as error:
            raise AssertionError(f"{error}; still left: {left}") from None
        kept = list(set(load.created) - set(load.deleted))
        assert postgres.count("SELECT count(*) FROM patients WHERE id = ANY(%s::uuid[])", kept) == len(kept)
        assert "FATAL" not in supervisorctl(system, "status")  # and every part RUNNING: exit code 0
        for part in ("patient-worker", "patient", "analytics"):
            launcher_says(system, said_before, part, "working again", timeout=10)
    finally:
        system.stop()
