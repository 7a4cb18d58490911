"""What a gateway with no traffic wakes for, on a real Envoy and its rendered
config: its watchdogs seldom, each healthy part's check every 5 s."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stack.config import free_ports
from tests.support import running_gateway, voluntary_switches, wait_for

HEALTHY_CHECK_SECONDS = 5


class ReadyPart(BaseHTTPRequestHandler):
    """A part that is always ready; the server keeps when each check came."""

    protocol_version = "HTTP/1.1"  # Envoy keeps its checking connection open

    def do_GET(self):
        if self.path == "/health/ready":
            self.server.checked_at.append(time.monotonic())
        body = b'{"status":"UP"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def idle_gateway(tmp_path):
    """(Envoy's process, the checks patient's stand-in got): a real Envoy whose
    patient is a server that is always ready; nothing else behind it."""
    part = ThreadingHTTPServer(("127.0.0.1", 0), ReadyPart)
    part.checked_at = []
    serving = threading.Thread(target=part.serve_forever, daemon=True)
    serving.start()
    ports = free_ports(["GATEWAY_PORT", "ENVOY_ADMIN_PORT"])
    environ = {
        "PATIENT_PORT": str(part.server_address[1]),
        **{key: str(value) for key, value in ports.items()},
    }
    try:
        with running_gateway(tmp_path / "envoy" / "envoy.yaml", environ) as process:
            yield process, part.checked_at
    finally:
        part.shutdown()
        part.server_close()


def watchdog_wakeups(pid):
    """How often Envoy's watchdog threads (named dog:...) have gone to sleep so
    far: their voluntary context switches (a busy host's preemptions are not)."""
    return sum(
        voluntary_switches(pid, int(task.name))
        for task in Path(f"/proc/{pid}/task").iterdir()
        if (task / "comm").read_text().startswith("dog:")
    )


def test_an_idle_gateways_watchdog_threads_sleep(idle_gateway):
    process, _checks = idle_gateway
    before = watchdog_wakeups(process.pid)
    time.sleep(3)
    # Envoy's default (a look every 200 ms) wakes its two watchdog threads 30 times in 3 s.
    assert watchdog_wakeups(process.pid) - before <= 2


def test_a_healthy_part_is_checked_every_five_seconds(idle_gateway):
    _process, checked_at = idle_gateway
    wait_for(lambda: checked_at, timeout=10, message="the first check")
    first = checked_at[0]
    time.sleep(HEALTHY_CHECK_SECONDS + 1)
    since_first = [at - first for at in checked_at[1:] if at - first < HEALTHY_CHECK_SECONDS + 1]
    # One check 5 s after the first (every 2 s would have made three).
    assert len(since_first) == 1, since_first
    assert since_first[0] == pytest.approx(HEALTHY_CHECK_SECONDS, abs=0.5)
