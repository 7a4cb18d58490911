"""The whole system, started the way `make run` starts it, on free ports."""

import os
import shutil
import subprocess
import sys

import pytest
from playwright.sync_api import sync_playwright

from stack.harness import RunningSystem

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
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "-c",
            f"{system.env['PMS_RUN_DIR']}/supervisord.conf",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser_page():
    """A page of a headless Debian Chromium (.ci/run installs it; CI never skips the tests that use it)."""
    if CHROMIUM is None and not os.environ.get("CI"):
        pytest.skip("needs Debian's chromium (.ci/run installs it; CI never skips this)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()
