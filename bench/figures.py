"""The measurements behind `make bench`; each returns (value, detail)."""
import os
import re
import statistics
import subprocess
import threading
import time
import uuid
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
import requests
from supervisor.xmlrpc import SupervisorTransport

from stack.parts import ROOT
from stack.running import RunningSystem, wait_for

CREATE_SCRIPT = Path(__file__).with_name("create.lua")
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def postgres_admin_url():
    """The server the benchmarks make their databases on."""
    return os.environ.get("PMS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def bench_database(admin_url):
    name = f"pms_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url, name):
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def system(work_dir, database_url):
    running = RunningSystem(work_dir, {"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}).start()
    try:
        yield running
    finally:
        running.stop()


def wrk(url, seconds, connections, headers=(), script=None, script_args=(), threads=None):
    """Runs wrk; returns requests/s, p50 and p99 in ms, and non-2xx count."""
    threads = threads or min(4, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
               "--timeout", "5s"]
    for header in headers:
        command += ["-H", header]
    if script:
        command += ["-s", str(script)]
    command.append(url)
    if script_args:
        command += ["--", *map(str, script_args)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def latency(percent):
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        return round(float(value) * UNITS[unit], 2)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {"rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), 1), "seconds": seconds,
            "p50_ms": latency(50), "p99_ms": latency(99),
            "errors": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else "none"}


def processes_by_part(running):
    """{part name: its processes} for every supervised part (a gunicorn master
    with its workers is one part), plus every PostgreSQL backend as "postgres"."""
    transport = SupervisorTransport(None, None, f"unix://{running.env['PMS_RUN_DIR']}/supervisor.sock")
    supervisor = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor
    parts = {}
    for part in supervisor.getAllProcessInfo():
        if part["pid"]:
            process = psutil.Process(part["pid"])
            parts[part["name"]] = [process, *process.children(recursive=True)]
    parts["postgres"] = postgres_processes()
    return parts


def postgres_processes():
    """The PostgreSQL server's processes on this machine (its backends included)."""
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def cpu_seconds(processes):
    """User + system CPU seconds of the processes (one that has exited counts 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def context_switches(processes):
    """Context switches (voluntary and not) of every thread of the processes."""
    total = 0
    for process in processes:
        try:
            for thread_id in os.listdir(f"/proc/{process.pid}/task"):
                with open(f"/proc/{process.pid}/task/{thread_id}/status") as status:
                    total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except (FileNotFoundError, ProcessLookupError):
            pass  # the process or a thread has exited
    return total


def usage_by_part(running):
    """{part: (CPU seconds, context switches)}, read from its processes now."""
    return {name: (cpu_seconds(processes), context_switches(processes))
            for name, processes in processes_by_part(running).items()}


def usage_between(before, after):
    """{part: (CPU ms, context switches)} spent between two usage_by_part()
    readings (a part that appeared meanwhile counts from zero)."""
    return {name: ((cpu - before.get(name, (0.0, 0))[0]) * 1000, switches - before.get(name, (0.0, 0))[1])
            for name, (cpu, switches) in after.items()}


def with_cpu_cost(running, load):
    """Runs load() (a wrk result) and adds the CPU each part spent per request,
    in ms, and its context switches per request: where the time goes, which a
    noisy shared machine does not blur."""
    before = usage_by_part(running)
    result = load()
    spent = usage_between(before, usage_by_part(running))  # read again: PostgreSQL backends come and go
    requests_done = result["rps"] * result["seconds"]
    busy = {name: usage for name, usage in spent.items() if usage[0] > 0.01 * requests_done}
    result["cpu_ms_per_request"] = {name: round(cpu / requests_done, 3) for name, (cpu, _) in busy.items()}
    result["switches_per_request"] = {name: round(switches / requests_done, 1)
                                      for name, (_, switches) in busy.items()}
    return result


def idle_cpu(running, seconds=10):
    """Each part's CPU in ms per second while nothing is asked of the system:
    the fixed cost (polling, heartbeats) that every request's share includes."""
    before = usage_by_part(running)
    time.sleep(seconds)
    spent = usage_between(before, usage_by_part(running))
    return {name: round(cpu / seconds, 1) for name, (cpu, _) in spent.items()}


def any_patient_id(running, api):
    return api.get(f"{running.url}/api/patients", timeout=10).json()[0]["id"]


def p1_gateway_read(running, seconds, connections, rounds=3):
    """Authenticated GET /api/patients/{id} through the gateway vs straight to
    patient. Each round runs direct, gateway, gateway, direct and compares the
    two sums: a machine that speeds up or slows down during the round (a
    neighbour's load) moves both sides alike. The ratio is the median round's."""
    token = running.token()
    patient_id = any_patient_id(running, running.session(token))
    direct_url = f"http://127.0.0.1:{running.ports['PATIENT_PORT']}/patients/{patient_id}"
    gateway_url = f"{running.url}/api/patients/{patient_id}"
    headers = [f"Authorization: Bearer {token}"]
    wrk(direct_url, 2, connections)  # warm up connections and caches
    wrk(gateway_url, 2, connections, headers=headers)
    length = max(2, seconds // rounds // 2)

    def direct():
        return with_cpu_cost(running, lambda: wrk(direct_url, length, connections))

    def gateway():
        return with_cpu_cost(running, lambda: wrk(gateway_url, length, connections, headers=headers))

    measured = []  # (ratio, directs, gateways) per round
    for _ in range(rounds):
        direct_before, gateway_1, gateway_2, direct_after = direct(), gateway(), gateway(), direct()
        directs, gateways = (direct_before, direct_after), (gateway_1, gateway_2)
        ratio = round(sum(run["rps"] for run in gateways) / sum(run["rps"] for run in directs), 2)
        measured.append((ratio, directs, gateways))
    ratio, directs, gateways = sorted(measured, key=lambda entry: entry[0])[rounds // 2]
    return ratio, {
        "gateway_rps": round(statistics.mean(run["rps"] for run in gateways), 1),
        "direct_rps": round(statistics.mean(run["rps"] for run in directs), 1),
        "gateway_p99_ms": max(run["p99_ms"] for run in gateways),
        "direct_p99_ms": max(run["p99_ms"] for run in directs),
        "gateway_errors": sum(run["errors"] for _, _, runs in measured for run in runs),
        "round_ratios": [entry[0] for entry in measured], "connections": connections,
        "gateway_cpu_ms_per_request": gateways[0]["cpu_ms_per_request"],
        "direct_cpu_ms_per_request": directs[0]["cpu_ms_per_request"]}


def raw_insert_rate(database_url, seconds=5):
    """Single-row INSERT + COMMIT from one Python client: the floor of a write."""
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id uuid PRIMARY KEY, name text, "
                     "email text UNIQUE, created_at timestamptz DEFAULT now())")
        conn.commit()
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.execute("INSERT INTO bench_raw (id, name, email) VALUES (%s, %s, %s)",
                         (uuid.uuid4(), "Raw", f"{uuid.uuid4().hex}@example.com"))
            conn.commit()
            count += 1
        conn.execute("DROP TABLE bench_raw")
        conn.commit()
    return round(count / seconds, 1)


def p2_create(running, database_url, seconds, connections):
    """POST /api/patients end to end (database, billing, outbox) vs the raw insert loop."""
    token = running.token()
    run_id = uuid.uuid4().hex[:8]
    idle = idle_cpu(running)
    gateway = with_cpu_cost(running, lambda: wrk(
        f"{running.url}/api/patients", seconds, connections, script=CREATE_SCRIPT,
        headers=[f"Authorization: Bearer {token}"], script_args=[run_id + "g"]))
    direct = wrk(f"http://127.0.0.1:{running.ports['PATIENT_PORT']}/patients", seconds, connections,
                 script=CREATE_SCRIPT, script_args=[run_id + "d"])
    raw = raw_insert_rate(database_url.replace("postgresql+psycopg://", "postgresql://"))
    reads = wrk(f"{running.url}/api/patients", seconds, connections,
                headers=[f"Authorization: Bearer {token}"])
    ratio = round(gateway["rps"] / raw, 2)
    return ratio, {"creates_per_s": gateway["rps"], "p50_ms": gateway["p50_ms"], "p99_ms": gateway["p99_ms"],
                   "errors": gateway["errors"], "raw_inserts_per_s": raw,
                   "direct_creates_per_s": direct["rps"], "direct_p99_ms": direct["p99_ms"],
                   "gateway_list_reads_per_s": reads["rps"], "connections": connections,
                   "cpu_ms_per_create": gateway["cpu_ms_per_request"],
                   "switches_per_create": gateway["switches_per_request"],
                   "idle_cpu_ms_per_s": round(sum(idle.values()), 1),
                   "idle_cpu_ms_per_s_by_part": {name: ms for name, ms in idle.items() if ms >= 1.0}}


def p3_event_lag(running, rate, seconds):
    """Time from a create's 201 to the moment analytics' summary counts it."""
    api = running.session()
    summary_url = f"http://127.0.0.1:{running.ports['ANALYTICS_PORT']}/analytics/summary"
    poller = requests.Session()
    base = poller.get(summary_url, timeout=5).json()["patientsCreated"]
    total = rate * seconds
    observed = []  # (time, patientsCreated)
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            observed.append((time.monotonic(), poller.get(summary_url, timeout=5).json()["patientsCreated"]))
            time.sleep(0.005)

    def create(index):
        response = api.post(f"{running.url}/api/patients", timeout=10, json={
            "name": f"Lag {index}", "email": f"lag-{uuid.uuid4().hex}@example.com", "address": "1 Lag St",
            "dateOfBirth": "1980-01-01", "registeredDate": "2024-01-01"})
        assert response.status_code == 201, response.text
        return time.monotonic()

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = []
        for index in range(total):
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
            futures.append(pool.submit(create, index))
        done = sorted(future.result() for future in futures)
    wait_for(lambda: observed and observed[-1][1] >= base + total, timeout=60, message="all events counted")
    stop.set()
    watcher.join()
    lags = []
    for rank, finished in enumerate(done, start=1):
        counted = next(t for t, count in observed if count >= base + rank)
        lags.append(max(0.0, counted - finished) * 1000)
    lags.sort()
    p99 = round(lags[int(len(lags) * 0.99) - 1], 1)
    return p99, {"p50_ms": round(statistics.median(lags), 1), "p99_ms": p99, "creates": total,
                 "rate_per_s": rate}


def p4_list_scaling(admin_url):
    """A filtered list, page 1 and a deep page, with 1 k and with 1 M patients."""
    from patient import MIGRATIONS_DIR, create_app
    from patient.config import Config
    from pms_common.serve import migrate_and_seed

    timings = {}
    for size in (1_000, 1_000_000):
        name = f"pms_bench_p4_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = admin_url.rsplit("/", 1)[0] + "/" + name
        try:
            app = create_app(Config(DATABASE_URL=url, ENV="production"))
            migrate_and_seed(app, MIGRATIONS_DIR)
            with psycopg.connect(url) as conn:
                # Everyone gets a generated name; 200 share a rare surname the filter looks for.
                conn.execute("""
                    INSERT INTO patients (id, name, email, email_key, address, date_of_birth,
                        registered_date, billing_status, billing_attempts, created_at, updated_at, version)
                    SELECT gen_random_uuid(),
                           CASE WHEN n %% (%s / 200) = 0 THEN 'Quixotic Zephyrine ' || n
                                ELSE md5(n::text) || ' ' || md5((n * 7)::text) END,
                           'p' || n || '@example.com', 'p' || n || '@example.com', 'Somewhere',
                           DATE '1950-01-01' + (n %% 20000), DATE '2020-01-01' + (n %% 1500),
                           'ACTIVE', 0, now(), now(), 1
                    FROM generate_series(1, %s) AS n""", (size, size))
                conn.commit()
                conn.execute("ANALYZE patients")
            client = app.test_client()
            for label, query in (("page1", {"name": "zephyr", "page": 1, "page_size": 20}),
                                 ("deep", {"name": "zephyr", "page": 10, "page_size": 20})):
                for _ in range(5):  # warm up
                    client.get("/patients", query_string=query)
                samples = []
                for _ in range(30):
                    started = time.perf_counter()
                    response = client.get("/patients", query_string=query)
                    samples.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200 and len(response.get_json()) == 20
                timings[(size, label)] = statistics.median(samples)
            with app.app_context():
                from patient.extensions import db
                db.engine.dispose()
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ratio = round(max(timings[(1_000_000, label)] / timings[(1_000, label)] for label in ("page1", "deep")), 2)
    return ratio, {f"{label}_{size // 1000}k_ms": round(ms, 2) for (size, label), ms in timings.items()}


def p5_start_time(work_dir):
    """`make run` to ready: from a fresh clone (creates .venv, installs), then again (warm)."""
    clone = work_dir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    times = {}
    for label in ("cold", "warm"):
        running = RunningSystem(work_dir / label, cwd=clone, python=str(clone / ".venv" / "bin" / "python"))
        started = time.monotonic()
        running.start(timeout=900, command=["make", "run"])
        times[label] = round(time.monotonic() - started, 1)
        running.stop()
    return times["cold"], {"cold_s": times["cold"], "warm_s": times["warm"]}

