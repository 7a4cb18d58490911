"""The gateway's per-request log lines follow LOG_LEVEL like every service's:
all requests at INFO, only server errors (as ERROR lines) above it; its audit
log has a line for every request but its own health checks. Real Envoy with
the rendered config, no services behind it."""

import json
import subprocess
import time

import pytest
import requests

from gateway.render import render
from stack.config import free_ports
from tests.support import start_envoy, wait_for_envoy


@pytest.fixture
def gateway(tmp_path):
    started = []

    def start(log_level):
        ports = free_ports(["GATEWAY_PORT", "ENVOY_ADMIN_PORT"])
        config = render(
            tmp_path / log_level / "envoy.yaml",
            {
                "LOG_LEVEL": log_level,
                "PMS_DATA_DIR": str(tmp_path / log_level),  # the audit log's folder, this test's own
                **{key: str(value) for key, value in ports.items()},
            },
        )
        log_file = tmp_path / log_level / "envoy.log"
        process = start_envoy(config, log_file, stdout=subprocess.PIPE, text=True)
        started.append(process)
        url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        wait_for_envoy(
            process,
            lambda: requests.get(f"{url}/docs/", timeout=1).status_code == 200,
            log_file,
            "envoy to listen",
        )
        return process, url, tmp_path / log_level / "audit" / "gateway-audit.jsonl"

    yield start
    for process in started:
        process.kill()
        process.wait()


def access_lines(process, url):
    """Sends an OK request (/docs/), a 503 (/api/patients: its token check has
    no ext_authz to ask) and a probe of /health (503: no service is up);
    returns the log lines."""
    assert requests.get(f"{url}/docs/", timeout=5).status_code == 200
    assert requests.get(f"{url}/api/patients", timeout=5).status_code == 503
    assert requests.get(f"{url}/health", timeout=5).status_code == 503
    time.sleep(1.5)  # Envoy flushes access logs about once a second
    process.terminate()
    output, _ = process.communicate(timeout=10)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [(line["level"], line["path"], line["status"]) for line in lines]


def test_at_info_every_request_but_a_probe_is_logged(gateway):
    # As the services' access lines: a probe of /health writes none, whatever it answers.
    process, url, _ = gateway("INFO")
    lines = access_lines(process, url)
    assert ("INFO", "/docs/", 200) in lines and ("INFO", "/api/patients", 503) in lines
    assert not [line for line in lines if line[1] == "/health"]


def test_above_info_only_server_errors_are_logged_as_errors(gateway):
    process, url, _ = gateway("WARNING")
    lines = access_lines(process, url)
    assert lines == [("ERROR", "/api/patients", 503)]


def test_the_audit_log_leaves_out_the_gateways_own_health_checks(gateway):
    process, url, audit_log = gateway("INFO")
    for path in ("/health", "/docs/", "/health", "/api/patients"):
        requests.get(f"{url}{path}", timeout=5)
    time.sleep(1.5)  # Envoy flushes access logs about once a second
    process.terminate()
    process.communicate(timeout=10)
    audited = {line["path"] for line in map(json.loads, audit_log.read_text().splitlines())}
    assert audited == {"/docs/", "/api/patients"}
