"""The whole system, started the way `make run` starts it, on free ports."""
import subprocess
import sys

import pytest

from stack.running import RunningSystem

# Short windows so the throttling and revocation tests finish quickly.
TEST_SETTINGS = {"LOGIN_WINDOW_SECONDS": "3", "AUTHZ_CACHE_SECONDS": "1"}


def started_system(tmp_path_factory, name):
    """A fixture's body: a whole system of its own, stopped afterwards."""
    running = RunningSystem(tmp_path_factory.mktemp(name), TEST_SETTINGS).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    yield from started_system(tmp_path_factory, "system")


def supervisorctl(system, *args):
    """Stops, starts or inspects a part for real, as an operator would."""
    result = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                             f"{system.env['PMS_RUN_DIR']}/supervisord.conf", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
