"""The thin path through every real part, through the gateway only."""

import json

import psutil
import pytest
import requests

from stack.parts import GRPC_EXPERIMENTS, WEB_CONCURRENCY
from tests.e2e.conftest import supervisorctl
from tests.support import wait_for

pytestmark = pytest.mark.e2e


def test_create_flows_from_gateway_to_billing_and_analytics(system):
    assert requests.get(f"{system.url}/health", timeout=5).status_code == 200
    api = system.session()
    # The seeded patients' events are counted shortly after start; count from there.
    before = wait_for(
        lambda: (
            api.get(f"{system.url}/api/analytics/summary", timeout=5).json()["patientsCreated"] >= 15
            and api.get(f"{system.url}/api/analytics/summary", timeout=5).json()["patientsCreated"]
        ),
        timeout=30,
        message="the seeded patients counted",
    )

    response = api.post(
        f"{system.url}/api/patients",
        timeout=10,
        json={
            "name": "Walking Skeleton",
            "email": "skeleton@example.com",
            "address": "1 Frame St",
            "dateOfBirth": "1990-02-03",
            "registeredDate": "2024-06-01",
        },
    )
    assert response.status_code == 201, response.text
    patient = response.json()
    assert patient["billingStatus"] == "ACTIVE"

    account = api.get(f"{system.url}/api/billing/accounts/{patient['id']}", timeout=5)
    assert account.status_code == 200, account.text
    assert account.json()["accountId"] == patient["billingAccountId"]
    assert account.json()["status"] == "ACTIVE"

    wait_for(
        lambda: (
            api.get(f"{system.url}/api/analytics/summary", timeout=5).json()["patientsCreated"] == before + 1
        ),
        timeout=20,
        message="analytics to count the new patient",
    )


def test_without_a_valid_token_the_gateway_answers_401(system):
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        response = requests.get(f"{system.url}/api/patients", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["code"] == 401


def test_the_seeded_patients_and_user_are_there(system):
    api = system.session()  # the seeded dev user logged in
    for patient_id, name in (
        ("123e4567-e89b-12d3-a456-426614174000", "John Doe"),
        ("223e4567-e89b-12d3-a456-426614174014", "Isabella Walker"),
    ):
        response = api.get(f"{system.url}/api/patients/{patient_id}", timeout=5)
        assert response.status_code == 200, (patient_id, response.text)
        assert response.json()["name"] == name
    # Seeded patients get their billing accounts through the worker's retry.
    wait_for(
        lambda: (
            api.get(
                f"{system.url}/api/billing/accounts/123e4567-e89b-12d3-a456-426614174000", timeout=5
            ).status_code
            == 200
        ),
        timeout=20,
        message="seed billing account",
    )


def test_every_part_logs_json_lines_with_its_name(system):
    for part in ("patient", "auth", "billing", "analytics", "gateway"):
        lines = [line.split(" | ", 1)[1] for line in system.log_lines(part) if " | {" in line]
        assert lines, f"no JSON log lines from {part}"
        entry = json.loads(lines[-1])
        assert {"time", "level", "service", "message"} <= set(entry)


def test_a_killed_part_is_restarted_and_reported(system):
    # The analytics consumer runs in analytics' process tree: its master forks
    # it again and says so (pms_common.serve), and it reports in again.
    pid = system.loop_pid("analytics-consumer")
    master = psutil.Process(int(supervisorctl(system, "pid", "analytics").strip()))
    assert pid in [child.pid for child in master.children()]
    since = len(system.output)  # the system is shared: earlier tests kill parts too
    psutil.Process(pid).kill()

    def restarted():
        try:
            again = system.loop_pid("analytics-consumer")
        except (OSError, ValueError):
            return False
        return again != pid and again in [child.pid for child in master.children()]

    wait_for(restarted, timeout=30, message="the consumer to be restarted")

    def died():
        return [
            json.loads(line.split(" | ", 1)[1])
            for line in system.output[since:]
            if line.startswith("analytics ") and '"background loop died; restarting"' in line
        ]

    # The master's line reaches the output through its log file and the
    # launcher's tail, which may be after the new consumer wrote its status
    # (and then an earlier test's line alone made this test pass).
    said = wait_for(died, timeout=10, message="the master to say the consumer died")
    assert [(entry["part"], entry["exit_status"]) for entry in said] == [("analytics-consumer", "SIGKILL")]


def test_the_grpc_parts_run_with_the_tuned_grpc_settings(system):
    for part in ("patient", "billing", "ext-authz"):
        pid = int(supervisorctl(system, "pid", part).strip())
        assert psutil.Process(pid).environ().get("GRPC_EXPERIMENTS") == GRPC_EXPERIMENTS, part


def test_every_python_process_freezes_its_start_up_objects(system):
    # Without gc.freeze() a full collection walks every start-up object with the
    # GIL held (pms_common/freeze.py). gunicorn parts: in the master before it
    # forks (so the workers' collections leave the pages they share alone), and
    # once per worker.
    workers = int(system.env.get("WEB_CONCURRENCY", WEB_CONCURRENCY))
    expected = {
        "patient": 1 + workers,
        "auth": 1 + workers,
        "analytics": 1 + workers,
        "billing": 1,
        "patient-worker": 1,
        "analytics-consumer": 1,
        "ext_authz": 1,
        "audit": 1 + workers,
        "audit-consumer": 1,  # audit's two loops share one process, which logs as its first
    }
    # By the service each line names: a background loop logs in its service's log.
    frozen = [
        json.loads(line.split(" | ", 1)[1]) for line in system.output if '"start-up objects frozen"' in line
    ]
    for part, processes in expected.items():
        of_part = [entry for entry in frozen if entry["service"] == part]
        assert len(of_part) >= processes, (part, of_part)
        assert all(entry["objects"] > 10_000 for entry in of_part), (part, of_part)
