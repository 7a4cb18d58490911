"""The floor of a create on our stack, against the CPU that P2's goal allows.

    .venv/bin/python -m bench.stack_floor [--seconds 10] [--connections 16]

P2's goal is a rate: 0.30 of a raw INSERT+COMMIT loop. On this machine's
cores that rate leaves each create a budget of CPU, shared by every part and
by the load generator. This measures, in one run, the least each hop of a
create costs when it does nothing but the hop:
  - wrk, per request (it shares the cores in P2);
  - a bare Envoy route (no filters but the router);
  - gunicorn with our settings and Flask, flask-smorest loading and dumping
    the create's five fields with marshmallow (bench/floor_app.py; a bare
    Flask view that echoes the JSON is printed beside it);
  - a unary gRPC call, client and server (bench/grpc_call.py);
  - two single-row INSERTs in autocommit through SQLAlchemy Core (patient's
    row with its event, billing's account), client and PostgreSQL;
  - an event: produced once, consumed twice (analytics, billing), with the
    broker (Tansu, as `make run` starts it) in between.
Prints each, their sum (the floor), the budget, and the highest P2 ratio
the floor allows: above it no create path on this stack can go, here.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import requests
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer

from pms_common.db import create_engine
from pms_common.events import CREATED, PatientEvent
from pms_common.kafka import consumer_config, ensure_topics, producer_config
from stack.harness import free_port, wait_for
from stack.parts import GRPC_EXPERIMENTS, ROOT, envoy_command, tansu_command, tcp_open

from .figures import (
    CREATE_SCRIPT,
    bench_database,
    cpu_seconds,
    drop_database,
    postgres_admin_url,
    postgres_processes,
    raw_insert_rate,
    wrk,
)
from .grpc_call import measure_in_subprocess

P2_GOAL = 0.30
SQL_WRITES_PER_CREATE = 2  # the patient with its event (one statement), billing's account
CONSUMERS_PER_EVENT = 2  # analytics and billing
ENVOY_CONFIG = """
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: floor
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: app}}}}]}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: app
    connect_timeout: 1s
    type: STATIC
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app_port}}}}}}}}}]}}]}}
"""


def tree(process):
    return [process, *process.children(recursive=True)]


def children_cpu_seconds():
    """CPU of this process's exited children (wrk, once it has returned)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def http_floor(work, seconds, connections):
    """wrk → bare Envoy → gunicorn + bare Flask: CPU ms per request of each."""
    app_port, envoy_port = free_port(), free_port()
    config = work / "envoy.yaml"
    config.write_text(ENVOY_CONFIG.format(port=envoy_port, app_port=app_port))
    env = {**os.environ, "GRPC_EXPERIMENTS": GRPC_EXPERIMENTS}
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(ROOT / "pms_common" / "gunicorn_conf.py"),
            "--workers",
            "2",
            "--threads",
            "4",
            "--bind",
            f"127.0.0.1:{app_port}",
            "bench.floor_app:app",
        ],
        cwd=ROOT,
        env=env,
    )
    envoy = subprocess.Popen(envoy_command(config, "error"))
    try:
        base = f"http://127.0.0.1:{envoy_port}"
        wait_for(
            lambda: requests.post(f"{base}/echo/patients", json={}, timeout=1).status_code == 201,
            timeout=30,
            message="a POST through Envoy to gunicorn",
        )
        app_processes, envoy_process = tree(psutil.Process(app.pid)), psutil.Process(envoy.pid)
        costs = {}
        for view in ("echo", "smorest"):
            url = f"{base}/{view}/patients"
            wrk(url, 2, connections, script=CREATE_SCRIPT, script_args=["warm"])
            before = cpu_seconds(app_processes), cpu_seconds([envoy_process]), children_cpu_seconds()
            result = wrk(url, seconds, connections, script=CREATE_SCRIPT, script_args=[view])
            after = cpu_seconds(app_processes), cpu_seconds([envoy_process]), children_cpu_seconds()
            assert result["errors"] == 0, result
            done = result["rps"] * result["seconds"]
            # Envoy's and wrk's shares are kept from the last run, the flask-smorest view's.
            costs[view], costs["envoy"], costs["wrk"] = (
                (a - b) * 1000 / done for a, b in zip(after, before, strict=True)
            )
            costs[f"{view}_rps"] = result["rps"]
        return costs
    finally:
        for process in (envoy, app):
            process.terminate()
            process.wait(30)


def grpc_floor(calls=3000, threads=8):
    figures = measure_in_subprocess(GRPC_EXPERIMENTS, calls, threads)
    return figures["client_cpu_ms"], figures["server_cpu_ms"]


def sql_floor(database_url, writes=3000):
    """Single-row INSERTs in autocommit through SQLAlchemy Core on one open
    connection (no pool checkout per write): CPU ms per write of this client
    and of PostgreSQL."""
    engine = create_engine(database_url, autocommit=True)
    table = sa.Table(
        "bench_floor",
        sa.MetaData(),
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("email", sa.String(320), unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    table.create(engine)
    insert = sa.insert(table)
    try:

        def write(count):
            with engine.connect() as connection:
                for _ in range(count):
                    connection.execute(
                        insert,
                        {"id": uuid.uuid4(), "name": "Floor", "email": f"{uuid.uuid4().hex}@example.com"},
                    )

        write(200)  # warm up
        me, server = psutil.Process(), postgres_processes()
        before = cpu_seconds([me]), cpu_seconds(server)
        write(writes)
        after = cpu_seconds([me]), cpu_seconds(server)
        return tuple((a - b) * 1000 / writes for a, b in zip(after, before, strict=True))
    finally:
        table.drop(engine)
        engine.dispose()


def event_floor(events=20000):
    """Events produced back to back (acks=all, our producer settings) and
    consumed in batches of up to 500: CPU ms per event of the producer, one
    consumer and the broker, with batching at its best."""
    port = free_port()
    broker = subprocess.Popen(tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers = f"127.0.0.1:{port}"
        wait_for(lambda: tcp_open(port), timeout=30, message="the broker")
        ensure_topics(servers, ["floor"])
        payload = PatientEvent(
            patientId=str(uuid.uuid4()),
            name="Floor Patient",
            email="floor@example.com",
            event_type=CREATED,
            event_id=str(uuid.uuid4()),
            occurred_at="2026-01-01T00:00:00Z",
            address="1 Floor St",
            date_of_birth="1980-01-01",
            registered_date="2024-01-01",
        ).SerializeToString()
        me, broker_process = psutil.Process(), psutil.Process(broker.pid)
        producer = Producer(producer_config(servers))
        acknowledged = []
        start = cpu_seconds([me]), cpu_seconds([broker_process])
        for _ in range(events):
            producer.produce("floor", payload, on_delivery=lambda err, _msg: acknowledged.append(err is None))
            producer.poll(0)
        producer.flush(30)
        produced = cpu_seconds([me]), cpu_seconds([broker_process])
        assert len(acknowledged) == events and all(acknowledged)
        consumer = Consumer(consumer_config(servers, f"floor-{uuid.uuid4().hex[:6]}"))
        consumer.subscribe(["floor"])
        received, deadline = 0, time.monotonic() + 60
        while received < events and time.monotonic() < deadline:
            received += sum(1 for message in consumer.consume(500, 0.5) if not message.error())
        consumed = cpu_seconds([me]), cpu_seconds([broker_process])
        consumer.close()
        assert received == events, (received, events)
        per_event = lambda a, b: (a - b) * 1000 / events  # noqa: E731
        return {
            "produce": per_event(produced[0], start[0]),
            "consume": per_event(consumed[0], produced[0]),
            "broker_produce": per_event(produced[1], start[1]),
            "broker_consume": per_event(consumed[1], produced[1]),
        }
    finally:
        broker.terminate()
        broker.wait(30)


def floor_of_a_create(database_url, seconds=10, connections=16):
    """{hop: CPU ms per create} for the least each hop of a create costs, and
    the echo view's cost beside them (not part of the sum)."""
    sql_client, sql_server = sql_floor(database_url)
    with tempfile.TemporaryDirectory(prefix="pms-floor-") as work:
        http = http_floor(Path(work), seconds, connections)
    grpc_client, grpc_server = grpc_floor()
    event = event_floor()
    hops = {
        "wrk (the load, per request)": http["wrk"],
        "Envoy, one route, no filters": http["envoy"],
        "gunicorn + Flask + flask-smorest, 5 fields": http["smorest"],
        "gRPC unary call, client": grpc_client,
        "gRPC unary call, server": grpc_server,
        f"{SQL_WRITES_PER_CREATE} INSERTs (autocommit), SQLAlchemy Core": SQL_WRITES_PER_CREATE * sql_client,
        f"{SQL_WRITES_PER_CREATE} INSERTs (autocommit), PostgreSQL": SQL_WRITES_PER_CREATE * sql_server,
        "event, produce": event["produce"],
        f"event, {CONSUMERS_PER_EVENT} consumers": CONSUMERS_PER_EVENT * event["consume"],
        "event, broker": event["broker_produce"] + CONSUMERS_PER_EVENT * event["broker_consume"],
    }
    return {name: round(ms, 3) for name, ms in hops.items()}, round(http["echo"], 3)


def ceiling_ratio(floor_ms, raw_inserts_per_s):
    """The highest P2 ratio a create costing floor_ms of CPU can reach on this machine's cores."""
    return round(os.cpu_count() * 1000 / floor_ms / raw_inserts_per_s, 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    admin_url = postgres_admin_url()
    db_name, db_url = bench_database(admin_url)
    try:
        raw = raw_insert_rate(db_url)
        hops, echo_ms = floor_of_a_create(db_url, args.seconds, args.connections)
    finally:
        drop_database(admin_url, db_name)
    floor = sum(hops.values())
    cores = os.cpu_count()
    budget = cores * 1000 / (P2_GOAL * raw)
    for name, ms in hops.items():
        print(f"{name:<46}{ms:>8.3f} ms")
    print(f"{'  (gunicorn + Flask alone, echo the JSON)':<46}{echo_ms:>8.3f} ms")
    print(f"{'floor of a create':<46}{floor:>8.3f} ms")
    print(f"{f'budget at P2 = {P2_GOAL:.2f} (raw {raw:.0f}/s, {cores} cores)':<46}{budget:>8.3f} ms")
    print(f"highest P2 ratio the floor allows here: {ceiling_ratio(floor, raw)}")


if __name__ == "__main__":
    main()
