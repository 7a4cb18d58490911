"""Several copies of a part behind a real Envoy on its rendered config: a
request that could not reach a copy goes to another, whatever its method."""

import signal
import subprocess
import sys

import pytest
import requests

from stack.config import free_ports
from tests.support import running_gateway, wait_for

# A copy of auth that is always ready and answers a login with its name.
COPY = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[2].encode()


class Copy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(b'{"status":"UP"}')

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(b'{"copy":"' + NAME + b'"}')

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Copy).serve_forever()
"""


@pytest.fixture
def two_copies_of_auth(tmp_path):
    """(the gateway's URL, its admin URL, {name: (port, process)}): a real
    Envoy whose auth cluster has two copies, each a process of its own."""
    ports = free_ports(["GATEWAY_PORT", "ENVOY_ADMIN_PORT", "COPY_A", "COPY_B"])
    copies = {
        name: (
            ports[f"COPY_{name}"],
            subprocess.Popen([sys.executable, "-c", COPY, str(ports[f"COPY_{name}"]), name]),
        )
        for name in ("A", "B")
    }
    environ = {
        "AUTH_ADDRESSES": ",".join(f"127.0.0.1:{port}" for port, _ in copies.values()),
        "GATEWAY_PORT": str(ports["GATEWAY_PORT"]),
        "ENVOY_ADMIN_PORT": str(ports["ENVOY_ADMIN_PORT"]),
    }
    try:
        with running_gateway(tmp_path / "envoy" / "envoy.yaml", environ):
            yield (
                f"http://127.0.0.1:{ports['GATEWAY_PORT']}",
                f"http://127.0.0.1:{ports['ENVOY_ADMIN_PORT']}",
                copies,
            )
    finally:
        for _, process in copies.values():
            process.kill()
            process.wait()


def healthy_auth_ports(admin):
    lines = requests.get(f"{admin}/clusters", timeout=2).text.splitlines()
    return {
        int(line.split("::")[1].rsplit(":", 1)[1])
        for line in lines
        if line.startswith("auth::") and line.endswith("::health_flags::healthy")
    }


def test_a_write_that_could_not_reach_a_dead_copy_goes_to_the_other(two_copies_of_auth):
    gateway, admin, copies = two_copies_of_auth
    both = {port for port, _ in copies.values()}
    wait_for(lambda: healthy_auth_ports(admin) == both, timeout=15, message="both copies healthy")
    _port, dead = copies["A"]
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    # Until two checks miss it (up to 10 s) the gateway still balances onto the
    # dead copy; each login that lands there finds its port closed.
    answers = [
        requests.post(f"{gateway}/auth/login", json={"email": "a@b.c", "password": "x"}, timeout=10)
        for _ in range(20)
    ]
    assert healthy_auth_ports(admin) == both, "the checks took the dead copy out already: nothing was tested"
    assert [(answer.status_code, answer.json()) for answer in answers] == [(200, {"copy": "B"})] * 20
