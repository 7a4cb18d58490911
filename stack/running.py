"""The whole system started exactly as `make run` starts it, on free ports,
for the end-to-end tests and the benchmarks."""
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import requests

from .parts import PORTS, ROOT
from .run import die_with_parent

DEV_LOGIN = {"email": "testuser@test.com", "password": "password123"}
DATABASE_VARIABLES = ("DATABASE_URL", "PATIENT_DATABASE_URL", "AUTH_DATABASE_URL",
                      "BILLING_DATABASE_URL", "ANALYTICS_DATABASE_URL")


def ephemeral_ports_start(range_file="/proc/sys/net/ipv4/ip_local_port_range"):
    try:
        with open(range_file) as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port():
    """A port nothing listens on, for a server started next. Taken below the
    kernel's ephemeral range: a port the kernel hands out for port 0 can be
    taken by any outgoing connection before the server binds it (a part of
    the system once failed to start so), one below that range cannot."""
    start = ephemeral_ports_start()
    for _ in range(200):
        port = random.randrange(max(1024, start - 12000), start)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: another
            return port
    raise OSError("no free port below the ephemeral range")


def wait_for(predicate, timeout=30.0, interval=0.05, message="condition"):
    """Calls predicate until it returns something truthy (returned) or the time is up."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # retried until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


class RunningSystem:
    """`python -m stack` in a folder of its own; `extra_env` adds settings
    (a DATABASE_URL, say). Output lines are kept for the caller to read."""

    def __init__(self, work_dir, extra_env=None, cwd=ROOT, python=sys.executable):
        self.ports = {name: free_port() for name in PORTS}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
                    "PMS_RUN_DIR": str(work_dir / "run"), "PMS_DATA_DIR": str(work_dir / "data")}
        for key in DATABASE_VARIABLES:
            self.env.pop(key, None)
        self.env.update(extra_env or {})
        self.url = f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"
        self.cwd = cwd
        self.python = python
        self.output = []
        self.process = None

    def start(self, timeout=240, command=None):
        self.process = subprocess.Popen(command or [self.python, "-m", "stack"], cwd=self.cwd,
                                        env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                        # A test run or a benchmark that is killed takes the system with it.
                                        preexec_fn=die_with_parent)
        ready = threading.Event()

        def read():
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                if "The Patient Management System is up." in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the system did not start:\n" + "\n".join(self.output[-80:]))
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_lines(self, part):
        return [line for line in self.output if line.startswith(f"{part} ")]

    def token(self, credentials=DEV_LOGIN):
        """Logs in; waits out a login throttle that another caller provoked."""
        def login():
            response = requests.post(f"{self.url}/auth/login", json=credentials, timeout=10)
            assert response.status_code in (200, 429), response.text
            return response.json()["token"] if response.status_code == 200 else None
        return wait_for(login, timeout=30, interval=0.5, message="a login")

    def session(self, token=None):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token()}"
        return session
