"""What metrics and tracing cost: P1 and P2 on a system with metrics off
(PMS_METRICS=off, no tracing), with metrics on, and with metrics and tracing
at 10 % sampling (OTLP to a collector in this process that drops the spans),
interleaved in one run.

    .venv/bin/python -m bench.experiments.observability_cost [options]

Options: --seconds 3 (each run in a slice), --connections 16, --cycles 8,
--rate 100 (the paced creates per second), --control (instead, the bare
system twice: the copy's ratios to the first are what the host's noise alone
gives; a fourth system would take more than PostgreSQL's 100 connections),
--reverse (the systems started in the reverse order: on a host where the
system started first costs more, a run each way cancels that),
--both-orders (the two in one run: half the cycles on systems started in the
usual order, the other half on systems started again in reverse), --split
(instead, metrics on, tracing with no trace sampled and tracing at 10 %:
what every request pays for tracing apart from what the sampled tenth adds).

Every setting's system runs at once, each on a fresh PostgreSQL database.
Each cycle gives each system in turn one slice of load (P1's round: direct,
gateway, gateway, direct; creates through the gateway as fast as it takes
them, as P2 does; then creates offered at a fixed rate), in an order
that rotates from cycle to cycle, while the others idle. A host whose speed
drifts (a busy neighbour) then moves every setting of a cycle alike, so the
figures are each cycle's ratios to the bare system's, their median and
range (the issue's goals: metrics within 5 %, tracing at 10 % within 15 %)."""

import argparse
import statistics
import tempfile
import threading
import uuid
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from stack.harness import free_port

from .. import figures, open_loop


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
def otlp_collector(collector=None):
    """(collector, endpoint) of an OTLP/gRPC trace collector on a free port:
    `collector` (a TraceServiceServicer), a DroppingCollector by default."""
    collector = collector or DroppingCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield collector, f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)


def tracing(endpoint, ratio):
    """Metrics and tracing, a `ratio` of the traces sampled, exported to `endpoint`."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }


def settings(endpoint):
    return {
        "metrics off": {"PMS_METRICS": "off"},
        "metrics on": {},
        "metrics + tracing 10 %": tracing(endpoint, 0.1),
    }


def sampling_split(endpoint):
    """Tracing's cost in two: what every request pays (tracing on, no trace
    sampled) and what the sampled tenth adds, both against metrics on."""
    return {
        "metrics on": {},
        "metrics + tracing, none sampled": tracing(endpoint, 0.0),
        "metrics + tracing 10 %": tracing(endpoint, 0.1),
    }


@contextmanager
def system_on_fresh_database(work_dir, extra_env):
    admin_url = figures.postgres_admin_url()
    db_name, db_url = figures.bench_database(admin_url)
    try:
        with figures.system(work_dir, db_url, extra_env) as running:
            yield running
    finally:
        figures.drop_database(admin_url, db_name)


class Target:
    """One running system and what its slices of load send."""

    def __init__(self, running, seconds, connections, rate):
        self.running, self.seconds, self.connections, self.rate = running, seconds, connections, rate
        self.token = running.token()
        self.run_id = uuid.uuid4().hex[:8]
        self.slices = 0
        self.create_cpu_by_part = []  # each slice's P2 CPU ms per create, by part
        self.paced_cpu_by_part = []  # each slice's CPU ms per create at the fixed rate, by part
        self.read_cpu_by_part = []  # each slice's CPU ms per read through the gateway, by part
        self.errors = 0  # answers not 2xx over every slice: a failing system's figures do not count
        figures.p1_gateway_read(running, 4, connections, rounds=1)  # warms connections and caches

    def slice(self):
        """P1's round, creates as fast as the system takes them, and creates
        at the fixed rate: the figures of one slice."""
        self.slices += 1
        p1, reads = figures.p1_gateway_read(
            self.running, 2 * self.seconds, self.connections, rounds=1, warm_up=False
        )
        tag = f"{self.run_id}s{self.slices}"
        creates = figures.create_load(self.running, self.token, self.seconds + 1, self.connections, tag)
        paced = figures.with_cpu_cost(self.running, self.creates_at_rate)
        self.create_cpu_by_part.append(creates["cpu_ms_per_request"])
        self.paced_cpu_by_part.append(paced["cpu_ms_per_request"])
        self.read_cpu_by_part.append(reads["gateway_cpu_ms_per_request"])
        self.errors += reads["gateway_errors"] + creates["errors"] + paced["errors"]
        return {
            "P1": p1,
            "gateway reads/s": reads["gateway_rps"],
            "CPU ms/read": sum(reads["gateway_cpu_ms_per_request"].values()),
            "P2 CPU ms/create": sum(creates["cpu_ms_per_request"].values()),
            "creates/s": creates["rps"],
            "create p99 ms": creates["p99_ms"],
            f"CPU ms/create at {self.rate}/s": sum(paced["cpu_ms_per_request"].values()),
            f"p99 ms at {self.rate}/s": paced["p99_ms"],
        }

    def creates_at_rate(self):
        """Creates offered at a fixed rate (open loop): every setting does the
        same work per second, so their CPU per create compares the cost of a
        create alone, not also how well a saturated system batches."""
        body = figures.create_body(f"{self.run_id}p{self.slices}")
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        result = open_loop.run(f"{self.running.url}/api/patients", self.rate, self.seconds + 1, body, headers)
        return {**result, "rps": result["requests"] / result["seconds"]}


def compare(settings_by_name, args, prefix):
    """Starts a system per setting, runs `args.cycles` cycles of slices, and
    prints each setting's median figures and its ratios to the first
    setting's, cycle by cycle (median and range). With `args.control` the
    first setting runs twice instead, and nothing else (an A/A): the copy's
    ratios are the host's noise alone."""
    if args.control:
        first = next(iter(settings_by_name.items()))
        settings_by_name = dict([first, (f"{first[0]} (again)", first[1])])
    names = list(settings_by_name)
    # Each start order with the cycles it runs: with --both-orders the first
    # half in the usual order, then every system started again in the reverse
    # order for the second half.
    if args.both_orders:
        runs = [(names, (args.cycles + 1) // 2), (names[::-1], args.cycles // 2)]
    else:
        runs = [(names[::-1] if args.reverse else names, args.cycles)]
    cycles: list[dict[str, dict[str, float]]] = []
    all_targets: dict[str, list[Target]] = {name: [] for name in names}
    for start_order, cycle_count in runs:
        with tempfile.TemporaryDirectory(prefix=prefix) as work, ExitStack() as systems:
            targets = {}
            for index, name in enumerate(start_order):
                running = systems.enter_context(
                    system_on_fresh_database(Path(work) / f"setting-{index}", settings_by_name[name])
                )
                targets[name] = Target(running, args.seconds, args.connections, args.rate)
                all_targets[name].append(targets[name])
            print(f"started in the order: {', '.join(start_order)}", flush=True)
            for _ in range(cycle_count):
                turn = len(cycles) % len(names)
                cycles.append({name: targets[name].slice() for name in names[turn:] + names[:turn]})
                print(
                    f"cycle {len(cycles)}: " + "; ".join(f"{n} {fmt(cycles[-1][n])}" for n in names),
                    flush=True,
                )
    bare = names[0]
    keys = list(cycles[0][bare])
    print(f"\nmedian of {len(cycles)} cycles; (ratio to {bare}: median, min-max over the cycles)")
    for name in names:
        cells = []
        for key in keys:
            value = statistics.median(cycle[name][key] for cycle in cycles)
            ratios = [cycle[name][key] / cycle[bare][key] for cycle in cycles]
            cells.append(
                f"{key} {value:.2f} ({statistics.median(ratios):.3f}, {min(ratios):.2f}-{max(ratios):.2f})"
            )
        print(f"{name}: " + "; ".join(cells))
    errors = {name: sum(target.errors for target in all_targets[name]) for name in names}
    print("\nanswers not 2xx over the run: " + ", ".join(f"{name} {count}" for name, count in errors.items()))
    if any(errors.values()):
        print("a system that answered errors was failing (out of connections?): its figures do not count")
    for title, slices_of in (
        ("P2 CPU ms per create", lambda target: target.create_cpu_by_part),
        (f"CPU ms per create at {args.rate}/s", lambda target: target.paced_cpu_by_part),
        ("CPU ms per read through the gateway", lambda target: target.read_cpu_by_part),
    ):
        print(f"\n{title} by part, median of the cycles")
        for name in names:
            slices = [by_part for target in all_targets[name] for by_part in slices_of(target)]
            parts = sorted({part for by_part in slices for part in by_part})
            medians = {
                part: statistics.median(by_part.get(part, 0.0) for by_part in slices) for part in parts
            }
            print(f"{name}: " + ", ".join(f"{part} {value:.2f}" for part, value in medians.items()))


def fmt(figures_of):
    return ", ".join(f"{key} {value:.2f}" for key, value in figures_of.items())


def arguments(argv, description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=int, default=3, help="length of each wrk run in a slice")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--rate", type=int, default=100, help="creates/s of each slice's paced run")
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="start the systems in the reverse order (the bare one last): beside a run in the usual order, "
        "this cancels what starting first or last does to a system",
    )
    parser.add_argument(
        "--both-orders",
        action="store_true",
        help="half the cycles on systems started in the usual order, then the other half on systems started "
        "again in the reverse order: one run whose figures carry no start order's advantage",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="metrics on, tracing with no trace sampled and tracing at 10 %%: what every request pays apart "
        "from what the sampled tenth adds",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="instead of the settings, the first one twice: the copy's ratios are the host's noise (an A/A)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = arguments(argv, __doc__.splitlines()[0])
    with otlp_collector() as (collector, endpoint):
        compare((sampling_split if args.split else settings)(endpoint), args, "pms-observability-cost-")
        print(f"\nspans received with tracing on: {collector.spans}")


if __name__ == "__main__":
    main()
