"""`python -m billing` as it runs for real: migrates, serves while the broker
is down, and on SIGTERM goes NOT_SERVING, finishes the call in flight, exits 0."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pms_common.protos import billing_service_pb2_grpc
from tests.billing.conftest import new_patient_request, rightful_role, row_held
from tests.support import channel_as, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_main_serves_and_drains_on_sigterm(database_url, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "BILLING_PORT": str(port),
        "BILLING_DATABASE_URL": database_url,
        "PMS_DATA_DIR": str(tmp_path),
        "EVENTS_ENABLED": "true",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nothing listens there
        "SHUTDOWN_GRACE_SECONDS": "10",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "billing"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        billing = billing_service_pb2_grpc.BillingServiceStub(channel_as(channel, rightful_role))
        check = health_pb2.HealthCheckRequest(service="BillingService")
        wait_for(
            lambda: health.Check(check, timeout=1).status == SERVING, timeout=20, message="billing SERVING"
        )
        assert billing.CreateBillingAccount(new_patient_request(), timeout=5).status == "ACTIVE"

        watch = health.Watch(check, timeout=20)
        assert next(watch).status == SERVING
        patient_id = uuid.uuid4()
        with row_held(database_url, patient_id):
            in_flight = billing.CreateBillingAccount.future(
                new_patient_request(patient_id, email="secret.person@example.com"), timeout=20
            )
            time.sleep(0.5)  # the call is waiting for the held row
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            watch.cancel()
            time.sleep(0.3)
            assert not in_flight.done() and process.poll() is None
        assert in_flight.result(timeout=10).status == "ACTIVE"
        stdout, stderr = process.communicate(timeout=15)
    finally:
        channel.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr

    lines = [json.loads(line) for line in stdout.splitlines()]
    outcomes = [line for line in lines if line.get("rpc") == "CreateBillingAccount"]
    assert [line["code"] for line in outcomes] == ["OK", "OK"]
    assert outcomes[1]["patient_id"] == str(patient_id) and outcomes[1]["duration_ms"] >= 500
    assert "secret.person" not in stdout  # names and emails stay out of the logs
    # Seconds of reconnecting to the absent broker: each kind of failure said once.
    kafka_warnings = [line for line in lines if line.get("kafka_error")]
    assert 1 <= len(kafka_warnings) <= 3, kafka_warnings
    assert lines[-1]["message"] == "patient event consumer stopped"
