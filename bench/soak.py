"""Soak: steady creates (each read back) through the gateway for a long time,
then errors and memory. `python -m bench.soak --minutes 10 [--rate N]`

The create rate defaults to half of P2's creates/s from bench/results.json
(or 50/s); each create is read back once. The load is wrk (bench/soak.lua),
run in one-minute rounds: after each, the pause per connection is adjusted so
the achieved rate tracks the asked one, and every part's RSS (summed over its
processes) is read. Errors are wrk's non-2xx answers and socket errors. After
the load it waits (up to 2 min) until analytics counts every patient and every
patient has its billing account, and says how long that took.
"""

import argparse
import json
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from pms_common.db import create_engine

from . import figures
from .__main__ import RESULTS

SOAK_SCRIPT = Path(__file__).with_name("soak.lua")
CONNECTIONS = 8
READS_PER_CREATE = 1
ROUND_SECONDS = 60
CATCH_UP_SECONDS = 120


def caught_up(db_url):
    """After the load: how long until analytics counts every patient and every
    patient has its billing account (None if not within CATCH_UP_SECONDS),
    and the counts then."""
    engine = create_engine(db_url)
    started = time.monotonic()
    try:
        while True:
            with engine.connect() as connection:
                patients = connection.execute(sa.text("SELECT count(*) FROM patients")).scalar()
                pending = connection.execute(
                    sa.text("SELECT count(*) FROM patients WHERE billing_status <> 'ACTIVE'")
                ).scalar()
                counted = connection.execute(
                    sa.text("SELECT active_patients FROM analytics_summary")
                ).scalar()
            waited = time.monotonic() - started
            done = counted == patients and not pending
            if done or waited > CATCH_UP_SECONDS:
                return {
                    "patients": patients,
                    "analytics_counted": counted,
                    "billing_pending": pending,
                    "caught_up_after_s": round(waited, 1) if done else None,
                }
            time.sleep(0.5)
    finally:
        engine.dispose()


def rss_by_part(running):
    """MiB per supervised part (a gunicorn master with its workers counts as one)."""
    sizes = {}
    for name, processes in figures.processes_by_part(running).items():
        if name != "postgres":
            sizes[name] = round(sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20, 1)
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rate", type=float, help="creates per second (each is read back once)")
    parser.add_argument("--postgres", default=figures.postgres_admin_url())
    args = parser.parse_args(argv)
    rate = args.rate
    if rate is None:
        previous = json.loads(RESULTS.read_text()).get("P2", {}) if RESULTS.exists() else {}
        rate = round(previous.get("detail", {}).get("creates_per_s", 100) / 2, 1)
    db_name, db_url = figures.bench_database(args.postgres)
    work = Path(f"/tmp/pms-soak-{uuid.uuid4().hex[:6]}")
    rounds = []
    try:
        with figures.system(work, db_url) as running:
            token = running.token()
            samples = [("start", rss_by_part(running))]
            pace_ms = CONNECTIONS * 1000 / rate  # first guess: as if requests took no time
            for minute in range(1, args.minutes + 1):
                result = figures.wrk(
                    f"{running.url}/api/patients",
                    ROUND_SECONDS,
                    CONNECTIONS,
                    headers=[f"Authorization: Bearer {token}"],
                    script=SOAK_SCRIPT,
                    script_args=[f"{uuid.uuid4().hex[:6]}", round(pace_ms), READS_PER_CREATE],
                    threads=CONNECTIONS,
                )
                creates_per_s = result["rps"] / (1 + READS_PER_CREATE)
                rounds.append({**result, "pace_ms": round(pace_ms), "creates_per_s": round(creates_per_s, 1)})
                samples.append((f"{minute} min", rss_by_part(running)))
                # A connection's cycle is its pause plus its requests' time: keep
                # the requests' share, change the pause to hit the asked rate.
                busy_ms = max(0.0, CONNECTIONS * 1000 / max(creates_per_s, 0.1) - pace_ms)
                pace_ms = max(0.0, CONNECTIONS * 1000 / rate - busy_ms)
            pipeline = caught_up(db_url)
    finally:
        figures.drop_database(args.postgres, db_name)
    requests_done = sum(r["rps"] * r["seconds"] for r in rounds)
    errors = sum(r["errors"] for r in rounds)
    socket_errors = [r["socket_errors"] for r in rounds if r["socket_errors"] != "none"]
    achieved = round(sum(r["creates_per_s"] for r in rounds) / len(rounds), 1)
    print(
        f"\nsoak: {args.minutes} min, {rate} creates/s asked, {achieved} achieved (+{READS_PER_CREATE} read"
        f" each): {round(requests_done)} requests, non-2xx: {errors},"
        f" socket errors: {socket_errors or 'none'}"
    )
    print(
        "per minute: creates/s "
        + ", ".join(str(r["creates_per_s"]) for r in rounds)
        + "; p99 ms "
        + ", ".join(str(r["p99_ms"]) for r in rounds)
    )
    print(
        f"after the load: {pipeline['patients']} patients, analytics counted {pipeline['analytics_counted']},"
        f" billing pending {pipeline['billing_pending']}; caught up after {pipeline['caught_up_after_s']} s"
    )
    print("RSS MiB per part:")
    parts = sorted(samples[0][1])
    print(f"{'':>8}  " + " ".join(f"{p:>18}" for p in parts))
    for label, sizes in samples:
        print(f"{label:>8}  " + " ".join(f"{sizes.get(p, 0):>18}" for p in parts))
    return 1 if errors or socket_errors or pipeline["caught_up_after_s"] is None else 0


if __name__ == "__main__":
    raise SystemExit(main())
