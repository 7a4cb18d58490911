"""Prometheus metrics of the real parts (pms_common.metrics): /metrics of the
Flask parts counts requests per route template and status, gunicorn's workers
add up, and the gRPC frames count calls by method and status code."""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
from flask import Flask
from google.rpc import code_pb2
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from auth import MIGRATIONS_DIR as AUTH_MIGRATIONS
from auth import create_app as create_auth_app
from auth.config import Config as AuthConfig
from auth.extensions import db as auth_db
from auth.seed import seed_users
from billing.store import Store
from gateway.ext_authz.config import Config as AuthzConfig
from patient import MIGRATIONS_DIR as PATIENT_MIGRATIONS
from patient import create_app as create_patient_app
from patient.config import Config as PatientConfig
from patient.extensions import db as patient_db
from pms_common import metrics
from pms_common.config import DEV_USER_EMAIL, DEV_USER_PASSWORD
from pms_common.grpc_server import UNPARSEABLE
from pms_common.identity import ADMIN
from pms_common.metrics import MULTIPROC_VARIABLE, init_http_metrics, metrics_dir, scrape, use_multiprocess
from pms_common.protos import billing_service_pb2 as pb
from tests.auth.helpers import FAST_ARGON2, JWT_SECRET
from tests.billing.conftest import new_patient_request, serving
from tests.gateway.test_ext_authz import AuthServer, ExtAuthz
from tests.patient.conftest import VALID, BillingServer
from tests.support import free_port, migrated_apps, voluntary_switches, wait_for

REPO = Path(__file__).resolve().parents[1]
DURATION = "flask_http_request_duration_seconds"


@pytest.fixture
def metrics_folder(tmp_path, monkeypatch):
    """This process writes its samples to a folder of the test's own, as a
    part does (restored to memory afterwards)."""
    monkeypatch.setenv(MULTIPROC_VARIABLE, "")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setattr(metrics, "_folder_in_use", metrics._folder_in_use)
    return use_multiprocess(tmp_path / "metrics")


def samples(text):
    """{(sample name, frozenset of labels): value} of a text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())), 0.0)


def test_patient_metrics_count_requests_per_route_and_status_and_show_the_outbox(
    metrics_folder, tmp_path, database_url
):
    billing = BillingServer(f"sqlite:///{tmp_path / 'billing.db'}").start()
    try:
        with migrated_apps(create_patient_app, PATIENT_MIGRATIONS, patient_db, role=ADMIN) as build:
            app = build(PatientConfig(DATABASE_URL=database_url, BILLING_ADDRESS=billing.address))
            client = app.test_client()
            created = client.post("/patients", json=VALID)
            assert created.status_code == 201
            patient_id = created.get_json()["id"]
            assert client.get(f"/patients/{patient_id}").status_code == 200
            assert client.get(f"/patients/{patient_id}").status_code == 200
            assert client.get(f"/patients/{uuid.uuid4()}").status_code == 404
            assert client.get("/health/live").status_code == 200
            # A method no route takes: counted, under one label value whatever the client sent.
            assert client.open("/patients", method="FROBNICATE").status_code == 405
            assert client.open("/patients", method="FROB2").status_code == 405

            response = client.get("/metrics")
            assert response.status_code == 200
            assert response.content_type.startswith("text/plain")
            found = samples(response.get_data(as_text=True))
    finally:
        billing.stop()
        billing.store.dispose()
    one_patient = "/patients/<uuid:patient_id>"
    assert value(found, f"{DURATION}_count", method="GET", path=one_patient, status="200") == 2
    assert value(found, f"{DURATION}_count", method="GET", path=one_patient, status="404") == 1
    assert value(found, f"{DURATION}_count", method="POST", path="/patients", status="201") == 1
    assert value(found, "flask_http_request_total", method="POST", path="/patients", status="201") == 1
    assert value(found, "flask_http_request_total", method="GET", path=one_patient, status="404") == 1
    assert value(found, "flask_http_request_total", method="OTHER", path="<unmatched>", status="405") == 2
    methods = {dict(labels).get("method") for name, labels in found if name.startswith("flask_http_request")}
    assert methods == {"GET", "POST", "OTHER"}
    # Labelled by the route's template, never by an id; probes and scrapes are not counted.
    paths = {dict(labels).get("path") for name, labels in found if name.startswith(DURATION)}
    assert patient_id not in str(paths)
    assert not any(path and path.startswith(("/health", "/metrics")) for path in paths)
    # The create's event waits in the outbox: nothing publishes it here.
    assert value(found, "pms_outbox_backlog_events") == 1
    assert value(found, "pms_outbox_oldest_unsent_age_seconds") > 0


def test_an_unexpected_exception_is_counted_apart_from_its_500(metrics_folder):
    app = Flask("probe")

    @app.get("/records/<int:number>")
    def broken(number):
        raise RuntimeError(f"record {number} broke")

    init_http_metrics(app)
    client = app.test_client()
    assert client.get("/records/1").status_code == 500
    found = samples(client.get("/metrics").get_data(as_text=True))
    labels = {"method": "GET", "path": "/records/<int:number>", "status": "500"}
    assert value(found, "flask_http_request_total", **labels) == 1
    assert value(found, "flask_http_request_exceptions_total", **labels) == 1
    assert value(found, f"{DURATION}_count", **labels) == 1


def test_auth_metrics_count_logins_by_outcome_and_revoked_tokens(
    metrics_folder, tmp_path, database_url, monkeypatch
):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with migrated_apps(create_auth_app, AUTH_MIGRATIONS, auth_db) as build:
        config = AuthConfig(
            DATABASE_URL=database_url,
            DATA_DIR=str(tmp_path / "data"),
            ENV="dev",
            JWT_SECRET=JWT_SECRET,
            LOGIN_MAX_FAILURES=1,
            **FAST_ARGON2,
        )
        client = build(config, seed_users).test_client()
        good = {"email": DEV_USER_EMAIL, "password": DEV_USER_PASSWORD}
        token = client.post("/login", json=good).get_json()["token"]
        assert client.post("/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204
        wrong = {"email": DEV_USER_EMAIL, "password": "not the password at all"}
        assert client.post("/login", json=wrong).status_code == 401
        assert client.post("/login", json=wrong).status_code == 429
        found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "pms_auth_logins_total", outcome="success") == 1
    assert value(found, "pms_auth_logins_total", outcome="failure") == 1
    assert value(found, "pms_auth_logins_total", outcome="throttled") == 1
    assert value(found, "pms_auth_tokens_revoked_total") == 1
    assert value(found, f"{DURATION}_count", method="POST", path="/login", status="429") == 1


def test_billing_counts_calls_by_method_and_status_code(metrics_folder, database_url):
    store = Store(database_url)
    store.migrate()
    try:
        with serving(store, database_url) as billing:
            request = new_patient_request()
            billing.stub.CreateBillingAccount(request, timeout=5)
            billing.stub.CreateBillingAccount(request, timeout=5)  # the same account: opened once
            with pytest.raises(grpc.RpcError) as missing:
                billing.stub.GetBillingAccount(
                    pb.GetBillingAccountRequest(patientId=str(uuid.uuid4())), timeout=5
                )
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            billing.stub.CloseBillingAccount(
                pb.CloseBillingAccountRequest(patientId=request.patientId), timeout=5
            )
            garbled = billing.channel.unary_unary("/BillingService/GetBillingAccount")
            with pytest.raises(grpc.RpcError) as unparsed:
                garbled(b"\x0a\x02\xff\xfe", timeout=5)
            assert unparsed.value.details() == UNPARSEABLE
    finally:
        store.dispose()
    found = samples(scrape([metrics_folder]).decode())
    handled = "grpc_server_handled_total"
    labels = {"grpc_service": "BillingService"}
    assert value(found, handled, **labels, grpc_method="CreateBillingAccount", grpc_code="OK") == 2
    assert value(found, handled, **labels, grpc_method="GetBillingAccount", grpc_code="NOT_FOUND") == 1
    assert value(found, handled, **labels, grpc_method="GetBillingAccount", grpc_code="INVALID_ARGUMENT") == 1
    assert value(found, handled, **labels, grpc_method="CloseBillingAccount", grpc_code="OK") == 1
    assert (
        value(found, "grpc_server_handling_seconds_count", **labels, grpc_method="CreateBillingAccount") == 2
    )
    assert value(found, "pms_billing_accounts_opened_total") == 1
    assert value(found, "pms_billing_accounts_closed_total") == 1


def get_openapi(base):
    return requests.get(f"{base}/openapi.json", headers={"Connection": "close"}, timeout=5).status_code


def test_gunicorn_workers_add_up(tmp_path):
    """`python -m analytics` under gunicorn with two worker processes: every
    request is counted once, whichever worker served it."""
    port = free_port()
    env = {
        **os.environ,
        "ANALYTICS_PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'analytics.db'}",
        "PMS_DATA_DIR": str(tmp_path / "data"),
        "WEB_CONCURRENCY": "2",
        "WEB_THREADS": "1",
    }
    env.pop(MULTIPROC_VARIABLE, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    folder = metrics_dir(tmp_path / "data", "analytics")
    try:
        wait_for(
            lambda: requests.get(f"{base}/health/live", timeout=2).status_code == 200,
            timeout=90,
            message="analytics to serve",
        )
        statuses = []

        def openapi_by_both_workers():
            # Eight connections at once until both workers have counted one:
            # a lone worker may accept every sequential connection.
            with ThreadPoolExecutor(8) as pool:
                statuses.extend(pool.map(lambda _: get_openapi(base), range(8)))
            return len(list(folder.glob("counter_*.db"))) >= 2

        wait_for(openapi_by_both_workers, timeout=60, interval=0, message="requests served by both workers")
        assert set(statuses) == {200}
        requests_sent = len(statuses)
        found = samples(requests.get(f"{base}/metrics", timeout=5).text)
        assert (
            value(found, "flask_http_request_total", method="GET", path="/openapi.json", status="200")
            == requests_sent
        )
        assert (
            value(found, f"{DURATION}_count", method="GET", path="/openapi.json", status="200")
            == requests_sent
        )
    finally:
        process.terminate()
        process.wait(30)


def test_ext_authz_counts_checks_by_code_and_its_cache_lookups(
    metrics_folder, tmp_path, database_url, monkeypatch
):
    """The asyncio frame counts the same way, and ext_authz its cache's hits and misses."""
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with migrated_apps(create_auth_app, AUTH_MIGRATIONS, auth_db) as build:
        config = AuthConfig(
            DATABASE_URL=database_url,
            DATA_DIR=str(tmp_path / "data"),
            ENV="dev",
            JWT_SECRET=JWT_SECRET,
            **FAST_ARGON2,
        )
        auth_app = build(config, seed_users)
        token = (
            auth_app.test_client()
            .post("/login", json={"email": DEV_USER_EMAIL, "password": DEV_USER_PASSWORD})
            .get_json()["token"]
        )
        auth = AuthServer(auth_app).start()
        authz = ExtAuthz(AuthzConfig(AUTH_URL=f"http://127.0.0.1:{auth.port}", CACHE_SECONDS=30))
        try:
            assert authz.check(None).status.code == code_pb2.UNAUTHENTICATED  # no token: no lookup
            assert authz.check(f"Bearer {token}").status.code == code_pb2.OK  # asks auth
            assert authz.check(f"Bearer {token}").status.code == code_pb2.OK  # from the cache
            garbled = authz.channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
            with pytest.raises(grpc.RpcError) as unparsed:
                garbled(b"\x0a\x02\xff\xfe", timeout=5)
            assert unparsed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            authz.close()
            auth.stop()
    found = samples(scrape([metrics_folder]).decode())
    check = {"grpc_service": "envoy.service.auth.v3.Authorization", "grpc_method": "Check"}
    assert value(found, "grpc_server_handled_total", **check, grpc_code="OK") == 3
    assert value(found, "grpc_server_handled_total", **check, grpc_code="INVALID_ARGUMENT") == 1
    assert value(found, "pms_authz_cache_lookups_total", result="miss") == 1
    assert value(found, "pms_authz_cache_lookups_total", result="hit") == 1


def test_a_metrics_port_already_taken_is_said_and_the_part_goes_on(tmp_path, caplog):
    from pms_common.metrics import serve_metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_metrics("127.0.0.1", port, [tmp_path]) is None
    [line] = [record for record in caplog.records if record.name == "pms_common.metrics"]
    assert line.levelname == "ERROR" and line.port == port


def test_a_metrics_port_serves_a_scrape_and_its_thread_sleeps_between_scrapes(metrics_folder):
    from pms_common.metrics import serve_metrics

    metrics.counter("pms_test_idle_scrapes_total", "A figure for the scrape").inc()
    port = free_port()
    server = serve_metrics("127.0.0.1", port, [metrics_folder])
    [thread] = [thread for thread in threading.enumerate() if thread.name == "metrics-server"]
    try:
        before = voluntary_switches(os.getpid(), thread.native_id)
        time.sleep(2.0)  # socketserver's default poll would wake it four times
        assert voluntary_switches(os.getpid(), thread.native_id) - before <= 1
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert value(samples(scraped.text), "pms_test_idle_scrapes_total") == 1
    finally:
        server.stop()
    thread.join(2.0)
    assert not thread.is_alive()  # stopped at once, not at its next look for a stop
