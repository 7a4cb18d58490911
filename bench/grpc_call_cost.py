"""CPU and context switches per unary gRPC call, with our GRPC_EXPERIMENTS and with grpc's defaults.

    .venv/bin/python -m bench.grpc_call_cost [--calls 3000] [--threads 8] [--rounds 3]

Each round runs both settings in turn. A setting gets a fresh pair of
processes (grpc reads GRPC_EXPERIMENTS when it is imported): a sync server with
the standard health service, like billing's, and a client calling it from
`--threads` threads, like the patient service's gunicorn threads. Prints each
side's CPU ms and context switches per call, and the calls per second.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import psutil

from stack.parts import GRPC_EXPERIMENTS, grpc_serving
from stack.running import free_port, wait_for

from .figures import context_switches, cpu_seconds

SETTINGS = {"ours": GRPC_EXPERIMENTS, "grpc defaults": ""}
WARM_UP_CALLS = 200


def usage(pid):
    process = [psutil.Process(pid)]
    return cpu_seconds(process), context_switches(process)


def serve(port):
    import grpc
    from concurrent import futures
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    server = grpc.server(futures.ThreadPoolExecutor(16))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def call(port, calls, threads):
    """Runs in a process of its own: the client side of one setting."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    server = subprocess.Popen([sys.executable, "-m", "bench.grpc_call_cost", "--serve", str(port)])
    try:
        wait_for(lambda: grpc_serving(port), timeout=20, message="the gRPC server")
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        request = health_pb2.HealthCheckRequest()
        for _ in range(WARM_UP_CALLS):
            stub.Check(request)

        def caller():
            for _ in range(calls // threads):
                stub.Check(request)

        workers = [threading.Thread(target=caller) for _ in range(threads)]
        client_before, server_before = usage(os.getpid()), usage(server.pid)
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - started
        client_after, server_after = usage(os.getpid()), usage(server.pid)
        done = calls // threads * threads
        print(json.dumps({
            "client_cpu_ms": round((client_after[0] - client_before[0]) * 1000 / done, 3),
            "client_switches": round((client_after[1] - client_before[1]) / done, 1),
            "server_cpu_ms": round((server_after[0] - server_before[0]) * 1000 / done, 3),
            "server_switches": round((server_after[1] - server_before[1]) / done, 1),
            "calls_per_s": round(done / seconds)}))
    finally:
        server.kill()
        server.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--call", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    if args.call:
        return call(args.call, args.calls, args.threads)
    figures = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, experiments in SETTINGS.items():
            output = subprocess.run(
                [sys.executable, "-m", "bench.grpc_call_cost", "--call", str(free_port()),
                 "--calls", str(args.calls), "--threads", str(args.threads)],
                env={**os.environ, "GRPC_EXPERIMENTS": experiments}, capture_output=True, text=True,
                check=True, timeout=300).stdout
            figures[name].append(json.loads(output.strip().splitlines()[-1]))
            print(f"{name:<14} {figures[name][-1]}")
    print("medians:")
    for name, runs in figures.items():
        print(f"{name:<14} " + json.dumps({key: statistics.median(run[key] for run in runs) for key in runs[0]}))


if __name__ == "__main__":
    main()
