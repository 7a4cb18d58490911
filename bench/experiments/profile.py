"""Where a request's CPU goes: profiles every Python part under load.

    .venv/bin/python -m bench.experiments.profile [--load create|read] [--tracing [--sampled 0.1]]
        [--seconds 12] [--top 25]

Starts the system on a fresh PostgreSQL database, puts wrk load through the
gateway (creates, or authenticated reads by id), and meanwhile samples each
Python part with py-spy, counting only threads that hold the GIL (so waiting
on a socket or a lock is not counted as work). Prints each part's CPU ms per
request and its functions by inclusive share of samples; the raw stacks are
written to bench/profiles/<part>.txt (collapsed format, for flame graph tools).
With --tracing the system exports traces at 10 % sampling to a collector in
this process that drops them (observability_cost's setting); --sampled sets
another ratio (1.0 and 0.0, one run each, put a sampled request's whole
cost beside an unsampled one's).
"""

import argparse
import contextlib
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from stack.parts import BIN, ROOT

from .. import figures
from .observability_cost import otlp_collector, tracing

PROFILES = ROOT / "bench" / "profiles"
# The Python parts; gunicorn's master only forks, so its workers and the
# background loops it forked (the relay, the consumers) are profiled.
PYTHON_PARTS = ("patient", "auth", "billing", "analytics", "ext-authz", "audit")
SAMPLES_PER_SECOND = 200


def frame_name(frame):
    """'function (module.py)' from py-spy's 'function (path/to/module.py:line)'."""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else function


def summary(collapsed_file, top):
    """The most frequent functions, by the share of samples they appear in."""
    inclusive, total = Counter(), 0
    for line in collapsed_file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for name in {frame_name(frame) for frame in stack.split(";")}:
            inclusive[name] += int(count)
    return total, [(round(100 * count / total, 1), name) for name, count in inclusive.most_common(top)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=("create", "read"), default="create")
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tracing", action="store_true", help="export traces at 10 %% sampling")
    parser.add_argument("--sampled", type=float, default=0.1, help="with --tracing, the ratio sampled")
    args = parser.parse_args(argv)
    PROFILES.mkdir(exist_ok=True)
    admin_url = figures.postgres_admin_url()
    db_name, db_url = figures.bench_database(admin_url)
    with contextlib.ExitStack() as stack:
        extra_env = {}
        if args.tracing:
            _collector, endpoint = stack.enter_context(otlp_collector())
            extra_env = tracing(endpoint, args.sampled)
        result, spies = profile(args, db_url, extra_env, admin_url, db_name)
    report(args, result, spies)


def profile(args, db_url, extra_env, admin_url, db_name):
    """Runs the load with py-spy on every Python part; (wrk result, {part: spy})."""
    try:
        with figures.system(Path(tempfile.mkdtemp(prefix="pms-profile-")), db_url, extra_env) as running:
            token = running.token()
            headers = [f"Authorization: Bearer {token}"]
            if args.load == "create":

                def load():
                    return figures.wrk(
                        f"{running.url}/api/patients",
                        args.seconds,
                        args.connections,
                        script=figures.CREATE_SCRIPT,
                        headers=headers,
                        script_args=[f"profile{time.time_ns()}"],
                    )
            else:
                patient_id = figures.any_patient_id(running, running.session(token))

                def load():
                    return figures.wrk(
                        f"{running.url}/api/patients/{patient_id}",
                        args.seconds,
                        args.connections,
                        headers=headers,
                    )

            parts = figures.processes_by_part(running)
            targets = {}
            for name in PYTHON_PARTS:
                processes = parts.get(name, [])
                for index, process in enumerate(processes[1:] if len(processes) > 1 else processes):
                    targets[f"{name}.{index}"] = process.pid
            spies = {
                name: subprocess.Popen(
                    [
                        str(BIN / "py-spy"),
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(args.seconds),
                        "--rate",
                        str(SAMPLES_PER_SECOND),
                        "--gil",
                        "--nonblocking",
                        "--format",
                        "raw",
                        "-o",
                        str(PROFILES / f"{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, pid in targets.items()
            }
            result = figures.with_cpu_cost(running, load)
            for spy in spies.values():
                spy.wait()
    finally:
        figures.drop_database(admin_url, db_name)
    return result, spies


def report(args, result, spies):
    print(f"{args.load}: {result['rps']} requests/s, p99 {result['p99_ms']} ms")
    print(
        "CPU ms per request:",
        ", ".join(
            f"{name} {ms}" for name, ms in sorted(result["cpu_ms_per_request"].items(), key=lambda kv: -kv[1])
        ),
    )
    for name in spies:
        collapsed = PROFILES / f"{name}.txt"
        if not collapsed.exists() or not collapsed.read_text().strip():
            continue
        total, rows = summary(collapsed, args.top)
        print(f"\n{name}: {total} samples holding the GIL")
        for share, function in rows:
            print(f"  {share:5.1f}%  {function}")


if __name__ == "__main__":
    main()
