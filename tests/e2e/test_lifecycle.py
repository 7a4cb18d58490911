"""`make run`'s promises about processes: a busy port is named, SIGTERM stops
every part, none left behind."""
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from stack.parts import ROOT
from stack.running import RunningSystem

pytestmark = pytest.mark.e2e


def test_a_busy_port_is_named_and_nothing_starts(tmp_path):
    system = RunningSystem(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", system.ports["PATIENT_PORT"]))
        squatter.listen()
        result = subprocess.run([sys.executable, "-m", "stack"], cwd=ROOT, env=system.env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {system.ports['PATIENT_PORT']} is already in use (set PATIENT_PORT" in result.stdout
    assert not (tmp_path / "run" / "supervisord.pid").exists()


def test_sigterm_stops_every_part(tmp_path):
    system = RunningSystem(tmp_path).start()
    launcher = psutil.Process(system.process.pid)
    parts = launcher.children(recursive=True)
    commands = [p.cmdline() for p in parts]
    programs = " ".join(command[0] for command in commands)
    for expected in ("tansu", "envoy"):
        assert expected in programs
    modules = [command[command.index("-m") + 1] for command in commands if "-m" in command]
    for expected in ("supervisor.supervisord", "billing", "gateway.ext_authz", "patient.worker",
                     "analytics.consumer"):
        assert modules.count(expected) == 1, (expected, modules)
    # Each web service: its gunicorn master and the workers it forked.
    workers = int(system.env.get("WEB_CONCURRENCY", "2"))
    for web_service in ("patient", "auth", "analytics"):
        assert modules.count(web_service) == 1 + workers, (web_service, modules)
    # SIGTERM to the launcher alone (not its process group): it must stop the rest itself.
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(60) == 0
    gone, alive = psutil.wait_procs(parts, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"


HARNESS = """
import sys, time
from pathlib import Path
from stack.running import RunningSystem
system = RunningSystem(Path(sys.argv[1])).start()
print(system.process.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_harness_takes_its_system_with_it(tmp_path):
    # A benchmark or a test run killed outright (a CI timeout) runs no cleanup:
    # the system it started must not outlive it, holding ports and memory.
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(tmp_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        launcher = psutil.Process(int(harness.stdout.readline()))
        parts = [launcher, *launcher.children(recursive=True)]
        assert any("supervisord" in " ".join(p.cmdline()) for p in parts)
    finally:
        harness.kill()
        harness.wait()
    gone, alive = psutil.wait_procs(parts, timeout=60)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
