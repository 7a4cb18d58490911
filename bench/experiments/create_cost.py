"""CPU per create, one client at a time: for comparing two versions of the create path.

    .venv/bin/python -m bench.experiments.create_cost [--creates 3000] [--traceparent unsampled]

The patient app runs in this process (Flask's test client, no gunicorn, no
gateway) against a fresh PostgreSQL database, with a real billing server as a
subprocess on the same database. It prints the CPU per create of this process,
of billing and of PostgreSQL's processes, and the wall time. With no
concurrency there is less noise than under wrk, but the machine is shared:
run the two versions in turn, a few times each, in both orders.

With OTEL_EXPORTER_OTLP_ENDPOINT set, this process traces as a patient
worker does; `--traceparent unsampled` (or `sampled`) then sends each create
with a fresh traceparent of that kind, as the gateway does: its cost against
a run without the endpoint is what tracing adds to the patient service
(the spans of sampled creates go to that endpoint).
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

from pms_common import telemetry
from pms_common.identity import ADMIN
from stack.harness import free_port, wait_for
from stack.parts import grpc_serving

from ..figures import (
    bench_database,
    caller,
    cpu_seconds,
    drop_database,
    postgres_admin_url,
    postgres_processes,
)

WARM_UP_CREATES = 300


def new_patient():
    return {
        "name": "Ann Example",
        "email": f"{uuid.uuid4().hex}@example.com",
        "address": "1 Main St",
        "dateOfBirth": "1990-01-01",
        "registeredDate": "2024-01-01",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=3000)
    parser.add_argument("--traceparent", choices=["none", "unsampled", "sampled"], default="none")
    args = parser.parse_args(argv)
    admin_url = postgres_admin_url()
    db_name, db_url = bench_database(admin_url)
    data_dir = tempfile.mkdtemp(prefix="pms-create-cost-")
    billing_port = free_port()
    settings = {
        "DATABASE_URL": db_url,
        "BILLING_PORT": str(billing_port),
        "EVENTS_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "PMS_DATA_DIR": data_dir,
    }
    billing = subprocess.Popen([sys.executable, "-m", "billing"], env={**os.environ, **settings})
    try:
        os.environ.update(settings)
        from patient import MIGRATIONS_DIR, create_app
        from pms_common.web_app import Migrations

        app = create_app()
        Migrations.apply(app, MIGRATIONS_DIR)
        telemetry.start_tracing("patient")
        wait_for(lambda: grpc_serving(billing_port), timeout=30, message="the billing server")
        client = app.test_client()
        client.environ_base.update(
            {"HTTP_" + name.upper().replace("-", "_"): value for name, value in caller(ADMIN).items()}
        )
        flags = {"unsampled": "00", "sampled": "01"}.get(args.traceparent)

        def headers():
            """A fresh traceparent of the chosen kind, as the gateway sends one."""
            if flags is None:
                return {}
            return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"}

        for _ in range(WARM_UP_CREATES):
            assert client.post("/patients", json=new_patient(), headers=headers()).status_code == 201
        bodies = [(new_patient(), headers()) for _ in range(args.creates)]
        parts = {
            "patient": [psutil.Process()],
            "billing": [psutil.Process(billing.pid)],
            "postgres": postgres_processes(),
        }
        before = {name: cpu_seconds(processes) for name, processes in parts.items()}
        started = time.perf_counter()
        for body, trace_headers in bodies:
            assert client.post("/patients", json=body, headers=trace_headers).status_code == 201
        wall = time.perf_counter() - started
        # Backends that came and went meanwhile are not counted; the pools keep theirs.
        cost = {
            name: round(1000 * (cpu_seconds(processes) - before[name]) / args.creates, 3)
            for name, processes in parts.items()
        }
        print(
            json.dumps(
                {
                    "creates": args.creates,
                    "traced": telemetry.tracing_configured(),
                    "traceparent": args.traceparent,
                    "cpu_ms_per_create": cost,
                    "wall_ms_per_create": round(1000 * wall / args.creates, 3),
                }
            )
        )
    finally:
        telemetry.stop_tracing()
        billing.terminate()
        billing.wait(20)
        drop_database(admin_url, db_name)


if __name__ == "__main__":
    main()
