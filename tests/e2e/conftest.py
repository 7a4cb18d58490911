"""The whole system, started the way `make run` starts it, on free ports."""
import pytest

from stack.running import RunningSystem

# Short windows so the throttling and revocation tests finish quickly.
TEST_SETTINGS = {"LOGIN_WINDOW_SECONDS": "3", "AUTHZ_CACHE_SECONDS": "1"}


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    running = RunningSystem(tmp_path_factory.mktemp("system"), TEST_SETTINGS).start()
    yield running
    running.stop()
