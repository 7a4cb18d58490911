"""Soak: creates and reads at a steady rate for a long time, then errors and
memory. `python -m bench.soak --minutes 10 [--rate N]`

The rate defaults to half of P2's creates/s from bench/results.json (or 50/s).
Every part's RSS (summed over its processes) is read at the start, each
minute, and at the end; a part whose memory keeps growing shows it here.
"""
import argparse
import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import figures
from .__main__ import RESULTS, bench_database, drop_database


def rss_by_part(running):
    """MiB per supervised part (a gunicorn master with its workers counts as one)."""
    sizes = {}
    for name, processes in figures.processes_by_part(running).items():
        if name != "postgres":
            sizes[name] = round(sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20, 1)
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, help="creates per second (reads are 3x that)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    rate = args.rate
    if rate is None:
        previous = json.loads(RESULTS.read_text()).get("P2", {}) if RESULTS.exists() else {}
        rate = round(previous.get("detail", {}).get("creates_per_s", 100) / 2, 1)
    db_name, db_url = bench_database(args.postgres)
    work = Path(f"/tmp/pms-soak-{uuid.uuid4().hex[:6]}")
    statuses = Counter()
    try:
        with figures.system(work, db_url) as running:
            api = running.session()
            samples = [("start", rss_by_part(running))]
            deadline = time.monotonic() + args.minutes * 60
            next_sample = time.monotonic() + 60

            in_flight = threading.BoundedSemaphore(64)

            def create(index):
                try:
                    one_patient(index)
                finally:
                    in_flight.release()

            def one_patient(index):
                response = api.post(f"{running.url}/api/patients", timeout=20, json={
                    "name": f"Soak {index}", "email": f"soak-{uuid.uuid4().hex}@example.com",
                    "address": "1 Soak St", "dateOfBirth": "1980-01-01", "registeredDate": "2024-01-01"})
                statuses[response.status_code] += 1
                for _ in range(3):
                    statuses[api.get(f"{running.url}/api/patients/{response.json()['id']}", timeout=20)
                             .status_code] += 1

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=32) as pool:
                index = 0
                while time.monotonic() < deadline:
                    time.sleep(max(0.0, started + index / rate - time.monotonic()))
                    in_flight.acquire()  # when the system falls behind, the offered rate drops
                    pool.submit(create, index)
                    index += 1
                    if time.monotonic() >= next_sample:
                        samples.append((f"{round((time.monotonic() - started) / 60)} min", rss_by_part(running)))
                        next_sample += 60
            achieved = round(index / (time.monotonic() - started), 1)
            samples.append(("end", rss_by_part(running)))
    finally:
        drop_database(args.postgres, db_name)
    errors = sum(count for status, count in statuses.items() if status >= 400)
    print(f"\nsoak: {args.minutes} min, {rate} creates/s asked, {achieved} achieved (+3 reads each): "
          f"{dict(statuses)}; errors: {errors}")
    print("RSS MiB per part:")
    parts = sorted(samples[0][1])
    print(f"{'':>8}  " + " ".join(f"{p:>18}" for p in parts))
    for label, sizes in samples:
        print(f"{label:>8}  " + " ".join(f"{sizes.get(p, 0):>18}" for p in parts))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
