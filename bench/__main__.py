"""`make bench`: starts the system on PostgreSQL and prints P1–P5.

    .venv/bin/python -m bench [--only P1,P2] [--seconds 10] [--connections 16]

P1 authenticated GET through the gateway vs straight to the service (wrk);
P2 POST /api/patients with 16 clients vs a raw INSERT+COMMIT loop;
P3 create → analytics count lag at 100 creates/s; P4 filtered list at 1 k vs
1 M patients; P5 `make run` to ready, cold (fresh clone) and warm. Writes
bench/results.json and prints the same as a table. Needs wrk (apt-get install
wrk) and PostgreSQL (PMS_BENCH_POSTGRES_URL, default the local server).
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from stack.parts import ROOT

from . import figures, stack_floor

RESULTS = ROOT / "bench" / "results.json"
# Each figure's goal, and its check on (value, detail).
GOALS = {"P1": (">= 0.80", lambda v, d: v >= 0.80),
         "P2": (">= 0.30, p99 < 50 ms", lambda v, d: v >= 0.30 and d["p99_ms"] < 50),
         "P3": ("< 250 ms", lambda v, d: v < 250), "P4": ("<= 2.0", lambda v, d: v <= 2.0),
         "P5": ("< 180 s, warm < 15 s", lambda v, d: v < 180 and d["warm_s"] < 15)}


def print_table(results):
    print(f"\n{'figure':<7}{'value':>10}  {'goal':<22}{'ok':<5}detail")
    for key, entry in results.items():
        detail = ", ".join(f"{k}={v}" for k, v in entry["detail"].items())
        print(f"{key:<7}{entry['value']:>10}  {entry['goal']:<22}{'yes' if entry['ok'] else 'NO':<5}{detail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="P1,P2,P3,P4,P5")
    parser.add_argument("--seconds", type=int, default=10, help="length of each load run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    if not shutil.which("wrk") and wanted & {"P1", "P2"}:
        sys.exit("bench needs wrk: apt-get install wrk")
    admin_url = figures.postgres_admin_url()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="pms-bench-"))
    measured = {}
    db_name, db_url = figures.bench_database(admin_url)
    try:
        if wanted & {"P1", "P2", "P3"}:
            with figures.system(work / "system", db_url) as running:
                if "P1" in wanted:
                    measured["P1"] = figures.p1_gateway_read(running, args.seconds, args.connections)
                if "P2" in wanted:
                    measured["P2"] = figures.p2_create(running, db_url, args.seconds, args.connections)
                if "P3" in wanted:
                    measured["P3"] = figures.p3_event_lag(running, rate=100, seconds=args.seconds)
            if "P2" in measured:  # with the system stopped: the floor of a create, for scale
                hops, _echo_ms = stack_floor.floor_of_a_create(db_url, args.seconds, args.connections)
                floor = round(sum(hops.values()), 3)
                detail = measured["P2"][1]
                detail["floor_cpu_ms_per_create"] = floor
                detail["ceiling_ratio"] = stack_floor.ceiling_ratio(floor, detail["raw_inserts_per_s"])
        if "P4" in wanted:
            measured["P4"] = figures.p4_list_scaling(admin_url)
        if "P5" in wanted:
            measured["P5"] = figures.p5_start_time(work / "p5")
    finally:
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
