"""`make run`'s promises about processes: a busy port is named, SIGTERM stops
every part, none left behind, not even when the launcher is killed outright,
and a clean stop delivers every event before it stops the broker."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from stack.harness import RunningSystem, wait_for
from stack.parts import ROOT, WEB_CONCURRENCY, readiness_problem

pytestmark = pytest.mark.e2e


def test_a_busy_port_is_named_and_nothing_starts(tmp_path):
    system = RunningSystem(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", system.ports["PATIENT_PORT"]))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "stack"],
            cwd=ROOT,
            env=system.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {system.ports['PATIENT_PORT']} is already in use (set PATIENT_PORT" in result.stdout
    assert not (tmp_path / "run" / "supervisord.pid").exists()


def test_a_second_start_in_the_same_run_folder_refuses_and_leaves_the_first_alone(system):
    # The first run's parts are not an earlier run's leftovers while its launcher lives.
    result = subprocess.run(
        [sys.executable, "-m", "stack"], cwd=ROOT, env=system.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f"make run already runs in {system.env['PMS_RUN_DIR']} (pid {system.process.pid})" in result.stdout
    assert requests.get(f"{system.url}/health", timeout=5).status_code == 200


def test_the_launchers_probes_leave_no_connection_open(system):
    # A gunicorn worker told to stop waits for its open connections until its
    # grace ends (20 s), then supervisord kills the part: a probe must not keep one.
    port = system.ports["PATIENT_PORT"]
    assert readiness_problem(f"http://127.0.0.1:{port}/health/ready") is None

    def open_to_the_part():
        return [
            connection
            for connection in psutil.Process().net_connections("tcp")
            if connection.raddr
            and connection.raddr.port == port
            and connection.status != psutil.CONN_TIME_WAIT
        ]

    wait_for(lambda: not open_to_the_part(), timeout=5, message="the probe's connection to close")


def test_sigterm_stops_every_part(tmp_path):
    system = RunningSystem(tmp_path).start()
    launcher = psutil.Process(system.process.pid)
    parts = launcher.children(recursive=True)
    commands = [p.cmdline() for p in parts]
    programs = " ".join(command[0] for command in commands)
    for expected in ("tansu", "envoy"):
        assert expected in programs
    modules = [command[command.index("-m") + 1] for command in commands if "-m" in command]
    for expected in ("supervisor.supervisord", "billing", "gateway.ext_authz"):
        assert modules.count(expected) == 1, (expected, modules)
    # Each web service: its gunicorn master, the workers it forked and its
    # background loops' processes (the outbox relay; the consumer; the consumer
    # and the collector, which share one).
    workers = int(system.env.get("WEB_CONCURRENCY", WEB_CONCURRENCY))
    for web_service, loops in (("patient", 1), ("auth", 0), ("analytics", 1), ("audit", 1)):
        assert modules.count(web_service) == 1 + workers + loops, (web_service, modules)
    # SIGTERM to the launcher alone (not its process group): it must stop the rest itself.
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(60) == 0
    gone, alive = psutil.wait_procs(parts, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    # Each part stopped on its own within its grace: supervisord killed none
    # (a connection left open to a gunicorn worker, or a loop whose stop
    # never comes, holds a part until its grace ends).
    supervisord_log = (Path(system.env["PMS_RUN_DIR"]) / "supervisord.log").read_text()
    assert "SIGKILL" not in supervisord_log, supervisord_log


HARNESS = """
import sys, time
from pathlib import Path
from stack.harness import RunningSystem
system = RunningSystem(Path(sys.argv[1])).start()
print(system.process.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_harness_takes_its_system_with_it(tmp_path):
    # A benchmark or a test run killed outright (a CI timeout) runs no cleanup:
    # the system it started must not outlive it, holding ports and memory.
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        launcher = psutil.Process(int(harness.stdout.readline()))
        parts = [launcher, *launcher.children(recursive=True)]
        assert any("supervisord" in " ".join(p.cmdline()) for p in parts)
    finally:
        harness.kill()
        harness.wait()
    gone, alive = psutil.wait_procs(parts, timeout=60)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"


def test_after_the_launcher_and_supervisord_are_killed_outright_the_next_start_works(tmp_path):
    system = RunningSystem(tmp_path).start()
    first_run = psutil.Process(system.process.pid).children(recursive=True)
    supervisord = psutil.Process(int((tmp_path / "run" / "supervisord.pid").read_text()))
    # Everything that supervises, gone at once: the launcher's process group and supervisord.
    os.killpg(system.process.pid, signal.SIGKILL)
    supervisord.kill()
    system.process.wait(10)
    system.output.clear()
    system.start()  # the same ports, run folder and data folder
    try:
        assert system.session().get(f"{system.url}/api/patients", timeout=10).status_code == 200
        _gone, alive = psutil.wait_procs(first_run, timeout=10)
        assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    finally:
        system.stop()
    assert system.process.returncode == 0


def test_a_clean_stop_right_after_a_burst_delivers_every_event_first(tmp_path):
    # Analytics reads in small batches gathered for a while, so it is still
    # reading the burst when the stop begins.
    system = RunningSystem(tmp_path, {"ANALYTICS_BATCH_SIZE": "10", "ANALYTICS_BATCH_WAIT_MS": "300"}).start()
    try:
        api = system.session()

        def create(index):
            patient = {
                "name": f"Burst {index}",
                "email": f"burst-{index}@example.com",
                "address": "1 Burst Rd",
                "dateOfBirth": "1980-01-01",
                "registeredDate": "2024-01-01",
            }
            return api.post(f"{system.url}/api/patients", json=patient, timeout=20)

        with ThreadPoolExecutor(8) as pool:
            created = [response.json()["id"] for response in pool.map(create, range(60))]
        deleted = created[:2]
        for patient_id in deleted:
            assert api.delete(f"{system.url}/api/patients/{patient_id}", timeout=20).status_code == 204
    finally:
        system.stop()  # right after the last acknowledged change
    said = [line.split(" | ", 1)[1] for line in system.output if line.startswith("make run ")]
    assert system.process.returncode == 0 and said[-1] == "stopped"
    assert not [line for line in said if "undelivered" in line], said
    # Delivered before the broker stopped: nothing waits in the outbox, and
    # analytics counted every event (the broker kept nothing for a later start).
    with sqlite3.connect(tmp_path / "data" / "patient.db") as patients:
        assert patients.execute(
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL"
        ).fetchone() == (0,)
    with sqlite3.connect(tmp_path / "data" / "analytics.db") as analytics:
        assert analytics.execute("SELECT count(*) FROM analytics_processed_events").fetchone() == (
            15 + 60 + 2,
        )

    system.output.clear()
    system.start()
    try:
        api = system.session()
        summary = api.get(f"{system.url}/api/analytics/summary", timeout=10).json()
        assert (summary["patientsCreated"], summary["patientsDeleted"]) == (15 + 60, 2)
        for patient_id in created:
            account = api.get(f"{system.url}/api/billing/accounts/{patient_id}", timeout=10).json()
            assert account["status"] == ("CLOSED" if patient_id in deleted else "ACTIVE"), account
    finally:
        system.stop()
