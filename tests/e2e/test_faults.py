"""Faults with real processes: a part stopped or killed while the system
works, then back. No create is lost, nothing is counted twice or half-written."""

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from stack import run
from stack.config import StackConfig
from stack.harness import free_port
from stack.parts import Part, build_parts, gateway_healthy_ports, readiness_problem
from tests.e2e.conftest import supervisorctl
from tests.support import wait_for

pytestmark = pytest.mark.e2e
BROKEN = 599  # a response cut short, counted with the 5xx
SEEDED_PATIENTS = 15  # patient/seed_patients.csv


def new_patient(tag):
    return {
        "name": f"Fault {tag}",
        "email": f"fault-{tag}-{uuid.uuid4().hex[:10]}@example.com",
        "address": "1 Fault Line",
        "dateOfBirth": "1970-01-01",
        "registeredDate": "2024-01-01",
    }


def created_count(system, api):
    return api.get(f"{system.url}/api/analytics/summary", timeout=10).json()["patientsCreated"]


def counted_so_far(system, api):
    """Analytics' count once it has counted at least the seeded patients (a
    system just started may still be publishing them)."""
    return wait_for(
        lambda: (count := created_count(system, api)) >= SEEDED_PATIENTS and count,
        timeout=30,
        interval=0.5,
        message="analytics to count the seeded patients",
    )


def create_many(system, api, count, tag, workers=8):
    def one(index):
        return api.post(f"{system.url}/api/patients", json=new_patient(f"{tag}{index}"), timeout=20)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def launcher_says(system, since, part, *words, timeout=60):
    """Waits for a line of the launcher's, from output line `since` on, about
    `part` and holding each of `words`."""

    def said():
        return [
            line
            for line in system.output[since:]
            if line.startswith("make run ") and f"| {part}: " in line and all(word in line for word in words)
        ]

    return wait_for(said, timeout=timeout, interval=0.5, message=f"the launcher to say {part}: ... {words}")


def part_pid(system, name):
    status = supervisorctl(system, "pid", name).strip()
    return int(status)


def test_broker_down_during_creates_then_back_counts_every_one(system):
    api = system.session()
    before = counted_so_far(system, api)
    said_before = len(system.output)
    supervisorctl(system, "stop", "broker")
    try:
        responses = create_many(system, api, 200, "broker")
        # The launcher names each part that waits for the broker, once.
        for part in ("patient-worker", "analytics-consumer"):
            launcher_says(system, said_before, part, "not doing its work", "waits for the broker")
    finally:
        supervisorctl(system, "start", "broker")
    assert [r.status_code for r in responses] == [201] * 200
    for part in ("patient-worker", "analytics-consumer"):
        launcher_says(system, said_before, part, "working again")
    wait_for(
        lambda: created_count(system, api) >= before + 200,
        timeout=120,
        interval=0.5,
        message="analytics to count the 200 creates after the broker returned",
    )
    time.sleep(3)  # anything counted twice would show up now
    assert created_count(system, api) == before + 200


def test_billing_down_then_back_every_patient_gets_an_account(system):
    api = system.session()
    supervisorctl(system, "stop", "billing")
    try:
        responses = create_many(system, api, 20, "billing")
    finally:
        supervisorctl(system, "start", "billing")
    assert [r.status_code for r in responses] == [201] * 20
    assert {r.json()["billingStatus"] for r in responses} == {"PENDING"}

    def all_active():
        return all(
            api.get(f"{system.url}/api/patients/{r.json()['id']}", timeout=10).json()["billingStatus"]
            == "ACTIVE"
            for r in responses
        )

    wait_for(all_active, timeout=90, interval=1, message="every patient to get its account")
    for response in responses:
        account = api.get(f"{system.url}/api/billing/accounts/{response.json()['id']}", timeout=10)
        assert account.status_code == 200 and account.json()["status"] == "ACTIVE"


def test_parts_killed_under_load_are_restarted_and_errors_stay_under_one_percent(system):
    api = system.session()
    before = counted_so_far(system, api)
    tag = f"k{uuid.uuid4().hex[:6]}"
    outcomes, created, stop = [], [], threading.Event()

    def load(worker):
        index = 0
        while not stop.is_set():
            index += 1
            try:
                if index % 4 == 0:
                    response = api.post(
                        f"{system.url}/api/patients", timeout=20, json=new_patient(f"{tag}-{worker}-{index}")
                    )
                    if response.status_code == 201:
                        created.append(response.json()["id"])
                else:
                    response = api.get(f"{system.url}/api/patients", params={"page_size": 5}, timeout=20)
                outcomes.append(response.status_code)
            except requests.RequestException:
                # A worker killed after it sent the headers: the gateway can only
                # cut the body short. An error for the count, and the load goes on.
                outcomes.append(BROKEN)

    billing_pid, consumer_pid = part_pid(system, "billing"), system.loop_pid("analytics-consumer")
    relay_pid = system.loop_pid("patient-worker")
    patient_workers = [
        child for child in psutil.Process(part_pid(system, "patient")).children() if child.pid != relay_pid
    ]
    threads = [threading.Thread(target=load, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    os.kill(billing_pid, signal.SIGKILL)
    os.kill(consumer_pid, signal.SIGKILL)
    patient_workers[0].kill()  # a gunicorn worker mid-request; its master replaces it
    time.sleep(10)
    stop.set()
    for thread in threads:
        thread.join()

    errors = [status for status in outcomes if status >= 500]  # BROKEN among them
    assert len(outcomes) > 100
    assert len(errors) / len(outcomes) < 0.01, f"{len(errors)} errors in {len(outcomes)} requests"
    wait_for(
        lambda: part_pid(system, "billing") not in (0, billing_pid),
        timeout=30,
        message="billing to be restarted",
    )
    wait_for(
        lambda: system.loop_pid("analytics-consumer") != consumer_pid,
        timeout=30,
        message="the consumer to be restarted",
    )
    # Nothing half-written: every patient that exists (including one whose 201 was
    # lost with a killed worker) is counted exactly once and has its account.
    stored = []
    page = 1
    while True:
        response = api.get(
            f"{system.url}/api/patients",
            timeout=10,
            params={"name": f"Fault {tag}-", "page": page, "page_size": 500},
        )
        stored += [patient["id"] for patient in response.json()]
        if not response.json():
            break
        page += 1
    assert set(created) <= set(stored) and len(stored) - len(created) <= len(errors)
    wait_for(
        lambda: created_count(system, api) >= before + len(stored),
        timeout=90,
        interval=0.5,
        message="analytics to count every create",
    )
    time.sleep(2)  # anything counted twice would show up now
    assert created_count(system, api) == before + len(stored)
    wait_for(
        lambda: all(
            api.get(f"{system.url}/api/billing/accounts/{pid}", timeout=10).status_code == 200
            for pid in stored
        ),
        timeout=90,
        interval=1,
        message="every account",
    )


def test_a_killed_patient_master_takes_its_workers_and_its_successor_takes_the_port(system):
    # Reads through the gateway all along: a master killed outright must cost
    # under 1 % of them, leave no worker of its own serving outside supervision,
    # and the master supervisord starts in its place must serve the port.
    api = system.session()
    port = system.ports["PATIENT_PORT"]
    master = psutil.Process(part_pid(system, "patient"))
    workers = master.children()
    assert workers
    outcomes, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                response = api.get(f"{system.url}/api/patients", params={"page_size": 5}, timeout=20)
                outcomes.append(response.status_code)
            except requests.RequestException:
                outcomes.append(BROKEN)
            time.sleep(0.01)

    def served_by(process):
        family = {process.pid, *(child.pid for child in process.children())}
        listening = {
            connection.pid
            for connection in psutil.net_connections("tcp")
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
        }
        return listening and listening <= family

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    time.sleep(3)
    master.kill()
    try:
        # Left alone, a worker serves on for its graceful timeout and keeps
        # the port from the new master meanwhile.
        _gone, alive = psutil.wait_procs(workers, timeout=15)
        assert alive == [], f"the old master's workers live on: {[p.pid for p in alive]}"
        successor = psutil.Process(part_pid(system, "patient"))
        assert successor.pid != master.pid
        wait_for(lambda: served_by(successor), timeout=5, message="the new master alone to listen")
        time.sleep(5)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    errors = [status for status in outcomes if status >= 500]
    assert len(outcomes) > 300
    assert len(errors) / len(outcomes) < 0.01, f"{len(errors)} errors in {len(outcomes)} requests"


def test_the_gateway_takes_a_part_back_within_half_a_second_of_it_answering(system):
    # Envoy checks a host that is not healthy every 250 ms and a healthy one
    # every 5 s: the gateway's health follows a part that is back at once,
    # three times in a row (checked every 5 s, one try in 1000 would be this quick).
    part_ready = f"http://127.0.0.1:{system.ports['ANALYTICS_PORT']}/health/ready"
    gateway_health = f"{system.url}/health"

    def status(url):
        try:
            return requests.get(url, timeout=2).status_code
        except requests.ConnectionError:
            return None

    for _ in range(3):
        supervisorctl(system, "stop", "analytics")
        wait_for(
            lambda: status(gateway_health) == 503,
            timeout=30,
            interval=0.1,
            message="the gateway to miss analytics",
        )
        # supervisorctl's start returns only after START_SECONDS: the part answers before that.
        starting = threading.Thread(target=supervisorctl, args=(system, "start", "analytics"))
        starting.start()
        try:
            wait_for(
                lambda: status(part_ready) == 200, timeout=60, interval=0.02, message="analytics to answer"
            )
            answered = time.monotonic()
            wait_for(
                lambda: status(gateway_health) == 200,
                timeout=30,
                interval=0.02,
                message="the gateway to take it back",
            )
            assert time.monotonic() - answered < 0.5
        finally:
            starting.join()


def test_the_launcher_asks_a_part_only_when_the_gateway_does_not_find_it_healthy(system, capsys):
    # The gateway health-checks these parts by the launcher's own question;
    # the launcher's status round asks only the ones it does not find healthy.
    gateway_checked = {
        part.name: part.gateway_checks_port
        for part in build_parts(system.ports, None, None)
        if part.gateway_checks_port is not None
    }
    assert set(gateway_checked) == {"auth", "billing", "patient", "analytics", "audit", "ext-authz"}
    admin_port = system.ports["ENVOY_ADMIN_PORT"]
    wait_for(
        lambda: gateway_healthy_ports(admin_port) >= set(gateway_checked.values()),
        timeout=30,
        message="the gateway to find every part it checks healthy",
    )
    asked = []
    analytics_ready = f"http://127.0.0.1:{system.ports['ANALYTICS_PORT']}/health/ready"

    def analytics_problem():
        asked.append(time.monotonic())
        return readiness_problem(analytics_ready)

    def launcher(environ):
        stack = run.Stack(StackConfig(environ))
        stack.parts = [
            Part("analytics", [], analytics_problem, gateway_checks_port=system.ports["ANALYTICS_PORT"])
        ]
        stack.problems = {"analytics": None}
        return stack

    running = [{"name": "analytics", "statename": "RUNNING"}]
    launcher(system.env).report_problems(running)
    assert asked == []
    # Without the gateway's word (its admin interface does not answer) the part is asked.
    launcher({**system.env, "ENVOY_ADMIN_PORT": str(free_port())}).report_problems(running)
    assert len(asked) == 1

    stack = launcher(system.env)
    supervisorctl(system, "stop", "analytics")
    try:
        wait_for(
            lambda: system.ports["ANALYTICS_PORT"] not in gateway_healthy_ports(admin_port),
            timeout=30,
            message="the gateway to miss analytics",
        )
        stack.report_problems(running)
        assert len(asked) == 2
    finally:
        supervisorctl(system, "start", "analytics")
    wait_for(
        lambda: system.ports["ANALYTICS_PORT"] in gateway_healthy_ports(admin_port),
        timeout=60,
        message="the gateway to take analytics back",
    )
    stack.report_problems(running)
    assert len(asked) == 2
    said = [line.split(" | ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert said == [
        "analytics: not doing its work: not answering (NewConnectionError)",
        "analytics: working again",
    ]
