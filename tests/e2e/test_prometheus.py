"""A real Prometheus (Debian's `prometheus`, which .ci/run installs) scrapes
the running system with the repository's own observability/prometheus.yml,
its targets moved from `make run`'s ports to the test system's; everything
is asserted through Prometheus' HTTP API."""

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from pms_common.config import LOOPBACK, PARTS
from pms_common.lifeline import die_with_parent
from stack.harness import free_port
from tests.support import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = REPO / "observability" / "prometheus.yml"
PROMETHEUS_PATHS = ("/usr/bin/prometheus",)
BURST = 30


def prometheus_binary():
    found = shutil.which("prometheus") or next((p for p in PROMETHEUS_PATHS if Path(p).exists()), None)
    assert found, "this test needs Debian's prometheus: apt-get install prometheus (.ci/run installs it)"
    return found


def config_for(system):
    """observability/prometheus.yml with each target at the port the test
    system gave that part, and a short scrape interval."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    port_by_default = {
        str(address.default_port): system.ports[address.port_setting] for address in PARTS.values()
    }
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            moved = []
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                assert host == LOOPBACK and port in port_by_default, f"{job['job_name']}: {target} is no part"
                moved.append(f"{LOOPBACK}:{port_by_default[port]}")
            static["targets"] = moved
    return config


@pytest.fixture(scope="module")
def prometheus(system, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prometheus")
    config = config_for(system)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    # Our own binary and arguments, no shell.
    process = subprocess.Popen(  # nosec B603
        [
            prometheus_binary(),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "prometheus.log").open("w"),
        preexec_fn=die_with_parent,
    )
    api = f"http://{LOOPBACK}:{port}/api/v1"
    try:
        wait_for(
            lambda: requests.get(f"{api}/status/buildinfo", timeout=2).ok, timeout=30, message="Prometheus"
        )
        yield api, [job["job_name"] for job in config["scrape_configs"]]
    finally:
        process.terminate()
        process.wait(30)


def query(api, promql):
    """The instant vector's samples: [(labels, value, timestamp)]."""
    answer = requests.get(f"{api}/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return [(row["metric"], float(row["value"][1]), row["value"][0]) for row in answer["data"]["result"]]


def test_every_target_is_up(prometheus):
    api, jobs = prometheus

    def targets_up():
        active = requests.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        health = {target["labels"]["job"]: (target["health"], target["lastError"]) for target in active}
        assert set(health) == set(jobs), health
        return all(state == "up" for state, _ in health.values()) and health

    wait_for(targets_up, timeout=60, interval=0.5, message="every target up")
    assert {labels["job"] for labels, value, _ in query(api, "up") if value == 1} == set(jobs)


def test_metrics_are_not_routed_through_the_gateway(system):
    assert requests.get(f"{system.url}/metrics", timeout=5).status_code == 404
    token = system.token()
    response = requests.get(f"{system.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert response.status_code == 404


def test_outbox_backlog_and_consumer_lag_return_to_zero_after_a_burst(system, prometheus):
    api, _ = prometheus
    admin = system.session()
    for number in range(BURST):
        created = admin.post(
            f"{system.url}/api/patients",
            json={
                "name": f"Burst {number}",
                "email": f"burst-{number}-{time.time_ns()}@example.com",
                "address": "1 Scrape St",
                "dateOfBirth": "1980-01-01",
                "registeredDate": "2024-01-01",
            },
            timeout=10,
        )
        assert created.status_code == 201, created.text
    burst_ended = time.time()

    def settled(promql, jobs):
        """Every series of the expression, scraped after the burst, is 0."""
        rows = query(api, promql)
        assert {labels["job"] for labels, _, _ in rows} >= jobs, rows
        scraped_after = [row for row in rows if row[2] > burst_ended]
        return len(scraped_after) == len(rows) and all(value == 0 for _, value, _ in rows)

    wait_for(
        lambda: settled("pms_outbox_backlog_events", {"patient"}),
        timeout=60,
        interval=0.5,
        message="the outbox backlog back to 0",
    )
    # Served by analytics' /metrics, and by the consumer's own port.
    wait_for(
        lambda: settled(
            'pms_consumer_lag_events{group="analytics-service"}', {"analytics", "analytics-consumer"}
        ),
        timeout=60,
        interval=0.5,
        message="the analytics consumer's lag back to 0",
    )
    assert all(
        value == 0 for _, value, _ in query(api, 'pms_consumer_lag_seconds{group="analytics-service"}')
    )
    assert all(value == 0 for _, value, _ in query(api, "pms_outbox_oldest_unsent_age_seconds"))

    def total(promql):
        return sum(value for _, value, _ in query(api, promql))

    # The burst as the other figures saw it, each once its target's next scrape has it.
    # The gateway's memo (gateway/authz_memo.lua) reuses a yes, so ext_authz saw the token at least once.
    authorization = 'grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check"'
    for counted, promql, at_least in (
        (
            "patient's creates",
            'flask_http_request_total{job="patient",method="POST",path="/patients",status="201"}',
            BURST,
        ),
        (
            "patient's create latencies",
            'flask_http_request_duration_seconds_count{job="patient",method="POST",path="/patients",status="201"}',
            BURST,
        ),
        (
            "billing's calls",
            'grpc_server_handled_total{job="billing",grpc_method="CreateBillingAccount",grpc_code="OK"}',
            BURST,
        ),
        ("billing's accounts", 'pms_billing_accounts_opened_total{job="billing"}', BURST),
        ("the login", 'pms_auth_logins_total{outcome="success"}', 1),
        (
            "ext_authz's checks",
            f'grpc_server_handled_total{{job="ext-authz",{authorization},grpc_code="OK"}}',
            1,
        ),
        ("ext_authz's cache lookups", 'pms_authz_cache_lookups_total{job="ext-authz"}', 1),
        ("the gateway's requests", 'envoy_http_downstream_rq_total{job="envoy"}', BURST),
    ):
        wait_for(
            lambda promql=promql, at_least=at_least: total(promql) >= at_least,
            timeout=30,
            message=f"{counted} counted",
        )
