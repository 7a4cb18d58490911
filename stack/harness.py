"""The test harness: the whole system started exactly as `make run` starts it, on free ports,
for the end-to-end tests and the benchmarks."""

import os
import signal

# Starts the system under test.
import subprocess  # nosec B404
import sys
import threading
import time

import requests

from pms_common.config import DEV_USER_EMAIL, DEV_USER_PASSWORD, LOOPBACK, PARTS, process_environment
from pms_common.lifeline import die_with_parent
from pms_common.status import read_status, status_path

from .config import free_port as free_port  # the tests take theirs from here
from .config import free_ports
from .parts import ROOT

DEV_LOGIN = {"email": DEV_USER_EMAIL, "password": DEV_USER_PASSWORD}
DATABASE_VARIABLES = (
    "DATABASE_URL",
    "PATIENT_DATABASE_URL",
    "AUTH_DATABASE_URL",
    "BILLING_DATABASE_URL",
    "ANALYTICS_DATABASE_URL",
    "AUDIT_DATABASE_URL",
    # Not a database, but the audit trail's input: a test system writes its own.
    "AUDIT_LOG_PATH",
)


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
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message}"
        + (f" (last error: {last_error!r})" if last_error else "")
    )


class RunningSystem:
    """`python -m stack` in a folder of its own; `extra_env` adds settings
    (a DATABASE_URL, say); `copies` runs several copies of parts (part name →
    count, stack's PMS_COPIES). Output lines are kept for the caller to read."""

    def __init__(self, work_dir, extra_env=None, cwd=ROOT, python=sys.executable, copies=None):
        self.ports = free_ports(address.port_setting for address in PARTS.values())
        self.env = {
            **process_environment(),
            **{k: str(v) for k, v in self.ports.items()},
            "PMS_RUN_DIR": str(work_dir / "run"),
            "PMS_DATA_DIR": str(work_dir / "data"),
        }
        for key in DATABASE_VARIABLES:
            self.env.pop(key, None)
        self.env.update(extra_env or {})
        if copies:
            self.env["PMS_COPIES"] = ",".join(f"{name}={count}" for name, count in copies.items())
        self.url = f"http://{LOOPBACK}:{self.ports['GATEWAY_PORT']}"
        self.cwd = cwd
        self.python = python
        self.output = []
        self.process = None

    def start(self, timeout=240, command=None):
        # Our own command, no shell.
        self.process = subprocess.Popen(
            command or [self.python, "-m", "stack"],
            cwd=self.cwd,  # nosec B603
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # A test run or a benchmark that is killed takes the system with it.
            preexec_fn=die_with_parent,
        )
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

    def loop_pid(self, loop, copy=1):
        """The pid of a background loop (the outbox relay, a consumer): its
        service forks it, and its status file names it (pms_common.status)."""
        return read_status(status_path(self.env["PMS_DATA_DIR"], loop, copy))["pid"]

    def token(self, credentials=DEV_LOGIN):
        """Logs in; waits out a login throttle that another caller provoked."""

        def login():
            response = requests.post(f"{self.url}/auth/login", json=credentials, timeout=10)
            if response.status_code not in (200, 429):
                raise AssertionError(f"login answered {response.status_code}: {response.text}")
            return response.json()["token"] if response.status_code == 200 else None

        return wait_for(login, timeout=30, interval=0.5, message="a login")

    def session(self, token=None):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token()}"
        return session
