"""`make bench`: measures the system (on PostgreSQL, or embedded for P6 and P7) and prints P1–P7.

    .venv/bin/python -m bench [--only P1,P2,P2_latency,P3,P4,P5,P6,P7] [--seconds 10]
        [--connections 16] [--rate 150] [--latency-seconds 60]

P1 authenticated GET through the gateway vs straight to the service (wrk), in
every round; P2 the whole system's CPU per create (wrk, 16 clients) over the
floor of a create (bench/stack_floor.py) measured in the same run; P2_latency
the p99 of creates at a fixed offered rate, open loop (bench/open_loop.py);
P3 create → analytics count lag at 100 creates/s; P4 filtered list at 1 k vs
1 M patients (P4F: its FHIR twin, GET /fhir/Patient?name=, on the same
patients; measured with P4); P5 `make run` to ready, cold (fresh clone) and
warm; P6 the summed PSS of every process of an idle `make run` system (SQLite)
and P7 its CPU per second, on one system. Writes bench/results.json and prints
the same as a table. Needs wrk (apt-get install wrk) for P1 and P2, and
PostgreSQL (PMS_BENCH_POSTGRES_URL, default the local server) for P1–P4.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from stack.parts import ROOT

from . import figures, stack_floor

FIGURES = ("P1", "P2", "P2_latency", "P3", "P4", "P5", "P6", "P7")

RESULTS = ROOT / "bench" / "results.json"
# Each figure's goal, and its check on (value, detail).
GOALS = {
    "P1": (">= 0.80 every round", lambda v, d: min(d["round_ratios"]) >= 0.80),
    "P2": ("<= 2.0 x floor", lambda v, d: v <= 2.0),
    "P2_latency": ("p99 < 50 ms, no errors", lambda v, d: v < 50 and d["errors"] == 0),
    "P3": ("< 250 ms", lambda v, d: v < 250),
    "P4": ("<= 2.0", lambda v, d: v <= 2.0),
    "P4F": ("<= 2.0", lambda v, d: v <= 2.0),
    "P5": ("< 60 s, warm < 5 s", lambda v, d: v < 60 and d["warm_s"] < 5),
    "P6": ("<= 600 MiB", lambda v, d: v <= 600),
    "P7": ("<= 20 ms/s", lambda v, d: v <= 20),
}


def p2_over_floor(cpu_ms, detail, hops):
    """P2's ratio: the system's CPU per create over the floor's hops that the
    system runs; wrk's share is the load's, counted on neither side."""
    load = {name: ms for name, ms in hops.items() if name.startswith("wrk")}
    floor = round(sum(ms for name, ms in hops.items() if name not in load), 3)
    detail["floor_cpu_ms_per_create"] = floor
    detail["floor_cpu_ms_by_hop"] = {name: ms for name, ms in hops.items() if name not in load}
    detail["wrk_cpu_ms_per_request"] = round(sum(load.values()), 3)
    return round(cpu_ms / floor, 2)


def print_table(results):
    print(f"\n{'figure':<11}{'value':>10}  {'goal':<24}{'ok':<5}detail")
    for key, entry in results.items():
        detail = ", ".join(f"{k}={v}" for k, v in entry["detail"].items())
        print(
            f"{key:<11}{entry['value']:>10}  {entry['goal']:<24}{'yes' if entry['ok'] else 'NO':<5}{detail}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FIGURES), help="figures to measure, comma-separated")
    parser.add_argument("--seconds", type=int, default=10, help="length of each load run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=150, help="P2_latency's offered creates/s")
    parser.add_argument("--latency-seconds", type=int, default=60, help="length of P2_latency's run")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    if unknown := wanted - set(FIGURES):
        parser.error(f"unknown figures {sorted(unknown)}; choose from {','.join(FIGURES)}")
    if not shutil.which("wrk") and wanted & {"P1", "P2"}:
        sys.exit("bench needs wrk: apt-get install wrk")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="pms-bench-"))
    measured = {}
    admin_url = db_name = None
    try:
        if wanted & {"P1", "P2", "P2_latency", "P3"}:
            admin_url = figures.postgres_admin_url()
            db_name, db_url = figures.bench_database(admin_url)
            with figures.system(work / "system", db_url) as running:
                if "P1" in wanted:
                    measured["P1"] = figures.p1_gateway_read(running, args.seconds, args.connections)
                if "P2" in wanted:
                    measured["P2"] = figures.p2_create(running, db_url, args.seconds, args.connections)
                if "P2_latency" in wanted:
                    measured["P2_latency"] = figures.p2_latency(running, args.rate, args.latency_seconds)
                if "P3" in wanted:
                    measured["P3"] = figures.p3_event_lag(running, rate=100, seconds=args.seconds)
            if "P2" in measured:  # with the system stopped: the floor of a create on this machine now
                cpu_ms, detail = measured["P2"]
                hops, _echo_ms = stack_floor.floor_of_a_create(db_url, args.seconds, args.connections)
                measured["P2"] = (p2_over_floor(cpu_ms, detail, hops), detail)
        if wanted & {"P4", "P4F"}:
            measured.update(figures.p4_list_scaling(admin_url or figures.postgres_admin_url()))
        if "P5" in wanted:
            measured["P5"] = figures.p5_start_time(work / "p5")
        if wanted & {"P6", "P7"}:
            idle = figures.p6_p7_idle(work / "idle")
            measured.update({key: idle[key] for key in ("P6", "P7") if key in wanted})
    finally:
        if db_name:
            figures.drop_database(admin_url, db_name)
        shutil.rmtree(work, ignore_errors=True)
    for key, (value, detail) in measured.items():
        goal, check = GOALS[key]
        results[key] = {"value": value, "goal": goal, "ok": bool(check(value, detail)), "detail": detail}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table({k: results[k] for k in sorted(results)})
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
