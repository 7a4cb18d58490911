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
    names = " ".join(" ".join(p.cmdline()) for p in parts)
    for expected in ("supervisord", "tansu", "envoy", "gunicorn", "billing", "ext_authz",
                     "patient.worker", "analytics.consumer"):
        assert expected in names
    # SIGTERM to the launcher alone (not its process group): it must stop the rest itself.
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(60) == 0
    gone, alive = psutil.wait_procs(parts, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
