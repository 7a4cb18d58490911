"""CPU and context switches per unary gRPC call on each side.

    .venv/bin/python -m bench.grpc_call [--calls 3000] [--threads 8]

A sync server with the standard health service, like billing's, runs in a
process of its own; this process calls it from `--threads` threads, like the
patient service's gunicorn threads. Prints one JSON line: each side's CPU ms
and context switches per call, and the calls per second. grpc reads
GRPC_EXPERIMENTS when it is imported, so the caller sets it in this process's
environment (stack_floor with the parts' setting).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stack.harness import free_port, wait_for
from stack.parts import grpc_serving

from .figures import context_switches, cpu_seconds

WARM_UP_CALLS = 200
SERVER_THREADS = 16


def usage(pid):
    process = [psutil.Process(pid)]
    return cpu_seconds(process), context_switches(process)


def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(SERVER_THREADS))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def call(calls, threads):
    """The client side, against a server started here; returns the figures."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.grpc_call", "--serve", str(port)])
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
    finally:
        server.kill()
        server.wait()
    done = calls // threads * threads
    return {
        "client_cpu_ms": round((client_after[0] - client_before[0]) * 1000 / done, 3),
        "client_switches": round((client_after[1] - client_before[1]) / done, 1),
        "server_cpu_ms": round((server_after[0] - server_before[0]) * 1000 / done, 3),
        "server_switches": round((server_after[1] - server_before[1]) / done, 1),
        "calls_per_s": round(done / seconds),
    }


def measure_in_subprocess(grpc_experiments, calls=3000, threads=8):
    """The figures of one run in fresh processes with GRPC_EXPERIMENTS set as given."""
    output = subprocess.run(
        [sys.executable, "-m", "bench.grpc_call", "--calls", str(calls), "--threads", str(threads)],
        env={**os.environ, "GRPC_EXPERIMENTS": grpc_experiments},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    print(json.dumps(call(args.calls, args.threads)))


if __name__ == "__main__":
    main()
