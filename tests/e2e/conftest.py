"""The whole system, started the way `make run` starts it, on free ports."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from stack.parts import PORTS
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEV_LOGIN = {"email": "testuser@test.com", "password": "password123"}


class RunningSystem:
    def __init__(self, tmp_path, extra_env=None):
        self.ports = {name: free_port() for name in PORTS}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
                    "PMS_RUN_DIR": str(tmp_path / "run"), "PMS_DATA_DIR": str(tmp_path / "data"),
                    # Short windows so throttling and revocation tests finish quickly.
                    "LOGIN_WINDOW_SECONDS": "3", "AUTHZ_CACHE_SECONDS": "1",
                    **(extra_env or {})}
        for key in ("DATABASE_URL", "PATIENT_DATABASE_URL", "AUTH_DATABASE_URL",
                    "BILLING_DATABASE_URL", "ANALYTICS_DATABASE_URL"):
            self.env.pop(key, None)
        self.url = f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"
        self.output = []
        self.process = None

    def start(self, timeout=240):
        self.process = subprocess.Popen([sys.executable, "-m", "stack"], cwd=ROOT, env=self.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def read():
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                if "The Patient Management System is up." in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the system did not start:\n" + "\n".join(self.output[-80:]))
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_lines(self, part):
        return [line for line in self.output if line.startswith(f"{part} ")]

    def token(self, credentials=DEV_LOGIN):
        """Logs in; waits out a login throttle that another test provoked."""
        def login():
            response = requests.post(f"{self.url}/auth/login", json=credentials, timeout=10)
            assert response.status_code in (200, 429), response.text
            return response.json()["token"] if response.status_code == 200 else None
        return wait_for(login, timeout=30, interval=0.5, message="a login")

    def session(self, token=None):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token()}"
        return session


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    running = RunningSystem(tmp_path_factory.mktemp("system")).start()
    yield running
    running.stop()
