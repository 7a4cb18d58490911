"""The measurements behind `make bench`; each returns (value, detail)."""

import json
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

from pms_common.consumer import QUIET_AFTER_SECONDS
from pms_common.identity import ROLE_HEADER, USER, USER_HEADER
from stack.harness import RunningSystem, wait_for
from stack.parts import ROOT

from . import open_loop

CREATE_SCRIPT = Path(__file__).with_name("create.lua")
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
MIB = 1024 * 1024


def caller(role):
    """The identity headers the gateway sets: a service called directly
    checks them itself."""
    return {USER_HEADER: "bench@example.com", ROLE_HEADER: role}


def as_wrk_headers(headers):
    return [f"{name}: {value}" for name, value in headers.items()]


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
def system(work_dir, database_url, extra_env=None):
    settings = {"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", **(extra_env or {})}
    running = RunningSystem(work_dir, settings).start()
    try:
        yield running
    finally:
        running.stop()


def wrk(url, seconds, connections, headers=(), script=None, script_args=(), threads=None):
    """Runs wrk; returns requests/s, p50 and p99 in ms, and non-2xx count."""
    threads = threads or min(4, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
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
    return {
        "rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), 1),
        "seconds": seconds,
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "none",
    }


def supervisor_of(running):
    transport = SupervisorTransport(None, None, f"unix://{running.env['PMS_RUN_DIR']}/supervisor.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervised_parts(running):
    """{part name: its processes} for every supervised part (a gunicorn master
    with its workers is one part)."""
    parts = {}
    for part in supervisor_of(running).getAllProcessInfo():
        if part["pid"]:
            process = psutil.Process(part["pid"])
            parts[part["name"]] = [process, *process.children(recursive=True)]
    return parts


def processes_by_part(running):
    """The supervised parts, plus every PostgreSQL backend as "postgres"."""
    return {**supervised_parts(running), "postgres": postgres_processes()}


def system_processes(running):
    """Every process of the running system, by part: the launcher (`python -m
    stack`), supervisord, each supervised part with its children, and as
    "other" anything else under the launcher."""
    launcher = psutil.Process(running.process.pid)
    unclaimed = {process.pid: process for process in launcher.children(recursive=True)}
    supervisord = psutil.Process(supervisor_of(running).getPID())
    groups = {"launcher": [launcher], "supervisord": [supervisord], **supervised_parts(running)}
    for processes in groups.values():
        for process in processes:
            unclaimed.pop(process.pid, None)
    if unclaimed:
        groups["other"] = list(unclaimed.values())
    return groups


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


def usage_by_part(running, processes_of=processes_by_part):
    """{part: (CPU seconds, context switches)}, read from its processes now."""
    return {
        name: (cpu_seconds(processes), context_switches(processes))
        for name, processes in processes_of(running).items()
    }


def pss_bytes(processes):
    """Summed proportional set size of the processes (one that has exited counts 0):
    pages shared between them (a fork's parent and workers) are counted once."""
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def rss_bytes(processes):
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def usage_between(before, after):
    """{part: (CPU ms, context switches)} spent between two usage_by_part()
    readings (a part that appeared meanwhile counts from zero)."""
    return {
        name: ((cpu - before.get(name, (0.0, 0))[0]) * 1000, switches - before.get(name, (0.0, 0))[1])
        for name, (cpu, switches) in after.items()
    }


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
    result["switches_per_request"] = {
        name: round(switches / requests_done, 1) for name, (_, switches) in busy.items()
    }
    return result


def any_patient_id(running, api):
    return api.get(f"{running.url}/api/patients", timeout=10).json()[0]["id"]


def p1_gateway_read(running, seconds, connections, rounds=3, warm_up=True):
    """Authenticated GET /api/patients/{id} through the gateway vs straight to
    patient. Each round runs direct, gateway, gateway, direct and compares the
    two sums: a machine that speeds up or slows down during the round (a
    neighbour's load) moves both sides alike. The ratio is the median round's.
    Without `warm_up`, the caller has already warmed the connections and caches."""
    token = running.token()
    patient_id = any_patient_id(running, running.session(token))
    direct_url = f"http://127.0.0.1:{running.ports['PATIENT_PORT']}/patients/{patient_id}"
    gateway_url = f"{running.url}/api/patients/{patient_id}"
    headers = [f"Authorization: Bearer {token}"]
    direct_headers = as_wrk_headers(caller(USER))
    if warm_up:
        wrk(direct_url, 2, connections, headers=direct_headers)
        wrk(gateway_url, 2, connections, headers=headers)
    length = max(2, seconds // rounds // 2)

    def direct():
        return with_cpu_cost(running, lambda: wrk(direct_url, length, connections, headers=direct_headers))

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
        "round_ratios": [entry[0] for entry in measured],
        "connections": connections,
        "gateway_cpu_ms_per_request": gateways[0]["cpu_ms_per_request"],
        "direct_cpu_ms_per_request": directs[0]["cpu_ms_per_request"],
    }


def raw_insert_rate(database_url, seconds=5):
    """Single-row INSERT + COMMIT from one Python client: the floor of a write."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_raw (id uuid PRIMARY KEY, name text, "
            "email text UNIQUE, created_at timestamptz DEFAULT now())"
        )
        conn.commit()
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.execute(
                "INSERT INTO bench_raw (id, name, email) VALUES (%s, %s, %s)",
                (uuid.uuid4(), "Raw", f"{uuid.uuid4().hex}@example.com"),
            )
            conn.commit()
            count += 1
        conn.execute("DROP TABLE bench_raw")
        conn.commit()
    return round(count / seconds, 1)


def p2_create(running, database_url, seconds, connections):
    """POST /api/patients end to end (database, billing, outbox) with wrk
    through the gateway: the whole system's CPU per create, summed over every
    part and PostgreSQL's backends (the value; __main__ divides it by the
    floor of a create), and the raw INSERT loop's rate, kept for history."""
    gateway = create_load(running, running.token(), seconds, connections, uuid.uuid4().hex[:8] + "g")
    raw = raw_insert_rate(database_url.replace("postgresql+psycopg://", "postgresql://"))
    cpu_ms = round(sum(gateway["cpu_ms_per_request"].values()), 3)
    return cpu_ms, {
        "cpu_ms_per_create": cpu_ms,
        "cpu_ms_per_create_by_part": gateway["cpu_ms_per_request"],
        "switches_per_create": gateway["switches_per_request"],
        "creates_per_s": gateway["rps"],
        "p50_ms": gateway["p50_ms"],
        "p99_ms": gateway["p99_ms"],
        "errors": gateway["errors"],
        "socket_errors": gateway["socket_errors"],
        "connections": connections,
        "raw_inserts_per_s": raw,
    }


def create_load(running, token, seconds, connections, run_tag):
    """Creates through the gateway as fast as the system takes them (wrk,
    create.lua; `run_tag` keeps their emails unique), with their CPU by part."""
    return with_cpu_cost(
        running,
        lambda: wrk(
            f"{running.url}/api/patients",
            seconds,
            connections,
            script=CREATE_SCRIPT,
            headers=[f"Authorization: Bearer {token}"],
            script_args=[run_tag],
        ),
    )


def create_body(run_id):
    """body(index) for open_loop: a create with an email of its own, as create.lua sends."""

    def body(index):
        return json.dumps(
            {
                "name": f"Bench Patient {index}",
                "email": f"bench-{run_id}-{index}@example.com",
                "address": "1 Bench Street",
                "dateOfBirth": "1980-01-01",
                "registeredDate": "2024-01-01",
            }
        ).encode()

    return body


def p2_latency(running, rate, seconds, warm_up_seconds=3):
    """Creates through the gateway at a fixed offered rate, open loop
    (bench/open_loop.py): the p99 from each create's due time. A short run at
    the same rate first opens the connections and warms the parts' caches."""
    headers = {"Authorization": f"Bearer {running.token()}", "Content-Type": "application/json"}
    url = f"{running.url}/api/patients"
    run_id = uuid.uuid4().hex[:8]
    open_loop.run(url, rate, warm_up_seconds, create_body(run_id + "w"), headers)
    result = open_loop.run(url, rate, seconds, create_body(run_id + "m"), headers)
    return result["p99_ms"], result


def p6_p7_idle(work_dir, settle_seconds=10, idle_seconds=20):
    """A system started as `make run` starts it (embedded: SQLite, no
    DATABASE_URL), left idle: P6 the summed PSS of every one of its processes
    `settle_seconds` after it is up, P7 their CPU in ms per second over the
    next `idle_seconds` seconds."""
    running = RunningSystem(work_dir).start()
    try:
        time.sleep(settle_seconds)
        groups = system_processes(running)
        pss = {name: pss_bytes(processes) / MIB for name, processes in groups.items()}
        rss = sum(rss_bytes(processes) for processes in groups.values()) / MIB
        processes = sum(len(members) for members in groups.values())
        before = usage_by_part(running, system_processes)
        time.sleep(idle_seconds)
        spent = usage_between(before, usage_by_part(running, system_processes))
    finally:
        running.stop()
    cpu = {name: cpu_ms / idle_seconds for name, (cpu_ms, _) in spent.items()}
    switches = sum(count for _, count in spent.values()) / idle_seconds
    return {
        "P6": (
            round(sum(pss.values()), 1),
            {
                "pss_mib_by_part": {name: round(mib, 1) for name, mib in sorted(pss.items())},
                "processes": processes,
                "rss_mib": round(rss, 1),
                "after_start_s": settle_seconds,
            },
        ),
        "P7": (
            round(sum(cpu.values()), 1),
            {
                "cpu_ms_per_s_by_part": {name: round(ms, 1) for name, ms in sorted(cpu.items())},
                "switches_per_s": round(switches, 1),
                "seconds": idle_seconds,
            },
        ),
    }


def p3_event_lag(running, rate, seconds):
    """Time from a create's 201 to the moment analytics' summary counts it,
    once the pipeline flows: one create is counted first, since a system
    just up may still be joining its consumer groups (that first event's lag
    is in the detail, `first_event_ms`); after the run, one more create's
    lag once the consumer has gone quiet (`after_quiet_ms`)."""
    api = running.session()
    summary_url = f"http://127.0.0.1:{running.ports['ANALYTICS_PORT']}/analytics/summary"
    poller = requests.Session()
    poller.headers.update(caller(USER))

    def created():
        return poller.get(summary_url, timeout=5).json()["patientsCreated"]

    def create(index):
        response = api.post(
            f"{running.url}/api/patients",
            timeout=10,
            json={
                "name": f"Lag {index}",
                "email": f"lag-{uuid.uuid4().hex}@example.com",
                "address": "1 Lag St",
                "dateOfBirth": "1980-01-01",
                "registeredDate": "2024-01-01",
            },
        )
        assert response.status_code == 201, response.text
        return time.monotonic()

    def one_event_ms(index):
        before = created()
        created_at = create(index)
        wait_for(lambda: created() > before, timeout=60, interval=0.005, message=f"event {index} counted")
        return round((time.monotonic() - created_at) * 1000, 1)

    first_event_ms = one_event_ms(-1)
    base = created()
    total = rate * seconds
    observed = []  # (time, patientsCreated)
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            observed.append((time.monotonic(), created()))
            time.sleep(0.005)

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
    time.sleep(QUIET_AFTER_SECONDS + 1.0)  # the consumer is quiet: it fetches once every QUIET_FETCH_SECONDS
    return p99, {
        "p50_ms": round(statistics.median(lags), 1),
        "p99_ms": p99,
        "creates": total,
        "rate_per_s": rate,
        "first_event_ms": first_event_ms,
        "after_quiet_ms": one_event_ms(total),
    }


# (figure, label, path, query, the page's size in its answer): P4's REST list
# and its FHIR twin, page 1 and a deep page, on the same patients.
P4_SEARCHES = (
    ("P4", "page1", "/patients", {"name": "zephyr", "page": 1, "page_size": 20}, len),
    ("P4", "deep", "/patients", {"name": "zephyr", "page": 10, "page_size": 20}, len),
    ("P4F", "page1", "/fhir/Patient", {"name": "zephyr", "_count": 20}, lambda body: len(body["entry"])),
    (
        "P4F",
        "deep",
        "/fhir/Patient",
        {"name": "zephyr", "_count": 20, "_offset": 180},
        lambda body: len(body["entry"]),
    ),
)


def p4_list_scaling(admin_url):
    """A filtered list, page 1 and a deep page, with 1 k and with 1 M
    patients: P4 on the REST API, P4F its FHIR twin (GET /fhir/Patient?name=)."""
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
                conn.execute(
                    """
                    INSERT INTO patients (id, name, email, email_key, address, date_of_birth,
                        registered_date, billing_status, billing_attempts, created_at, updated_at, version)
                    SELECT gen_random_uuid(),
                           CASE WHEN n %% (%s / 200) = 0 THEN 'Quixotic Zephyrine ' || n
                                ELSE md5(n::text) || ' ' || md5((n * 7)::text) END,
                           'p' || n || '@example.com', 'p' || n || '@example.com', 'Somewhere',
                           DATE '1950-01-01' + (n %% 20000), DATE '2020-01-01' + (n %% 1500),
                           'ACTIVE', 0, now(), now(), 1
                    FROM generate_series(1, %s) AS n""",
                    (size, size),
                )
                conn.commit()
                conn.execute("ANALYZE patients")
            client = app.test_client()
            client.environ_base.update(
                {"HTTP_" + name.upper().replace("-", "_"): value for name, value in caller(USER).items()}
            )
            for figure, label, path, query, page_size in P4_SEARCHES:
                for _ in range(5):  # warm up
                    client.get(path, query_string=query)
                samples = []
                for _ in range(30):
                    started = time.perf_counter()
                    response = client.get(path, query_string=query)
                    samples.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200 and page_size(response.get_json()) == 20
                timings[(figure, size, label)] = statistics.median(samples)
            with app.app_context():
                from patient.extensions import db

                db.engine.dispose()
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    results = {}
    for figure in ("P4", "P4F"):
        ratio = round(
            max(
                timings[(figure, 1_000_000, label)] / timings[(figure, 1_000, label)]
                for label in ("page1", "deep")
            ),
            2,
        )
        results[figure] = (
            ratio,
            {
                f"{label}_{size // 1000}k_ms": round(ms, 2)
                for (name, size, label), ms in timings.items()
                if name == figure
            },
        )
    return results


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
