"""What metrics and tracing cost: P1 and P2 on a system with metrics off
(PMS_METRICS=off, no tracing), with metrics on, and with metrics and tracing
at 10 % sampling (OTLP to a collector in this process that drops the spans),
in turns, in one run.

    .venv/bin/python -m bench.experiments.observability_cost [--seconds 10] [--connections 16] [--rounds 1]

Each setting gets a system of its own on a fresh PostgreSQL database; each
round runs the settings in turn, and the table shows each setting's medians
and their ratio to the bare system's (the issue's goals: metrics within 5 %,
tracing at 10 % within 15 %)."""

import argparse
import shutil
import statistics
import tempfile
import threading
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from stack.harness import free_port

from .. import figures


class DroppingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Takes every export and keeps only the count of spans."""

    def __init__(self):
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            self.spans += sum(
                len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
            )
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def otlp_collector():
    """(collector, endpoint) of an OTLP/gRPC trace collector on a free port."""
    collector = DroppingCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield collector, f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)


def settings(endpoint):
    return {
        "metrics off": {"PMS_METRICS": "off"},
        "metrics on": {},
        "metrics + tracing 10 %": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
    }


def measure(work_dir, extra_env, seconds, connections):
    admin_url = figures.postgres_admin_url()
    db_name, db_url = figures.bench_database(admin_url)
    try:
        with figures.system(work_dir, db_url, extra_env) as running:
            p1, p1_detail = figures.p1_gateway_read(running, seconds, connections)
            p2, p2_detail = figures.p2_create(running, db_url, seconds, connections)
    finally:
        figures.drop_database(admin_url, db_name)
    return {
        "P1": p1,
        "P1 gateway rps": p1_detail["gateway_rps"],
        "P2 cpu ms/create": p2,
        "P2 creates/s": p2_detail["creates_per_s"],
        "P2 p99 ms": p2_detail["p99_ms"],
    }


def compare(settings_by_name, args, prefix):
    """Measures each setting in turn, `args.rounds` times; prints every run,
    then each setting's medians with their ratio to the first setting's."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    runs = {name: [] for name in settings_by_name}
    try:
        for round_number in range(args.rounds):
            for index, (name, extra_env) in enumerate(settings_by_name.items()):
                work_dir = work / f"round-{round_number}-setting-{index}"
                runs[name].append(measure(work_dir, extra_env, args.seconds, args.connections))
                print(name, runs[name][-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {
        name: {key: statistics.median(run[key] for run in done) for key in done[0]}
        for name, done in runs.items()
    }
    bare = next(iter(medians.values()))
    width = max(map(len, medians)) + 2
    print(f"\n{'setting':<{width}}" + "".join(f"{key:>20}" for key in bare))
    for name, figures_of in medians.items():
        cells = "".join(f"{value:>12} ({value / bare[key]:.2f})" for key, value in figures_of.items())
        print(f"{name:<{width}}{cells}")


def arguments(argv, description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    return parser.parse_args(argv)


def main(argv=None):
    args = arguments(argv, __doc__.splitlines()[0])
    with otlp_collector() as (collector, endpoint):
        compare(settings(endpoint), args, "pms-observability-cost-")
        print(f"\nspans received with tracing on: {collector.spans}")


if __name__ == "__main__":
    main()
