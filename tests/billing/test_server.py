"""The server's frame: health that tells the truth, reflection, graceful stop."""

import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy.exc import SQLAlchemyError

from billing import SERVICE_NAMES, Config, create_server, readiness_probe, set_ready
from billing.store import Store
from tests.billing.conftest import account_count, new_patient_request, row_held
from tests.support import wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(channel, service):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_serving_only_once_the_store_is_ready(database_url):
    store = Store(database_url)  # not migrated yet
    server, port, frame = create_server(Config(DATABASE_URL=database_url), "127.0.0.1:0", store=store)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert health_of(channel, "") == health_of(channel, "BillingService") == NOT_SERVING
            with pytest.raises(SQLAlchemyError):
                set_ready(frame, store)  # no table yet: stays NOT_SERVING
            assert health_of(channel, "BillingService") == NOT_SERVING

            store.migrate()
            set_ready(frame, store)
            assert health_of(channel, "") == health_of(channel, "BillingService") == SERVING
    finally:
        server.stop(None)
        store.dispose()


def test_a_part_that_is_not_ready_probes_again_within_a_quarter_second_whatever_its_interval(database_url):
    store = Store(database_url)  # not migrated yet: the probe fails
    probes, probe = [], readiness_probe(store)

    def counted_probe():
        probes.append(time.monotonic())
        return probe()

    server, port, frame = create_server(Config(DATABASE_URL=database_url), "127.0.0.1:0", store=store)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            frame.follow(counted_probe, interval=30.0)
            wait_for(lambda: len(probes) >= 3, timeout=5, message="probes while not ready")
            assert health_of(channel, "BillingService") == NOT_SERVING
            store.migrate()
            migrated_at = time.monotonic()
            wait_for(lambda: health_of(channel, "BillingService") == SERVING, timeout=5, message="SERVING")
            assert time.monotonic() - migrated_at < 1.0  # not the 30 s interval
            # Ready: the next probe is the interval away.
            probes_when_ready = len(probes)
            time.sleep(1.0)
            assert len(probes) == probes_when_ready
    finally:
        frame.draining.set()
        server.stop(None)
        store.dispose()


def listed_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    return {service.name for service in next(answers).list_services_response.service}


def test_reflection_lists_billing_and_health_in_dev(billing):
    assert {"BillingService", "grpc.health.v1.Health"} <= listed_services(billing.channel)
    assert SERVICE_NAMES == ("BillingService",)  # no proto package: the original's wire name


def test_no_reflection_in_production(store, database_url, monkeypatch):
    monkeypatch.setenv("PMS_ENV", "production")
    server, port, frame = create_server(Config(DATABASE_URL=database_url), "127.0.0.1:0", store=store)
    server.start()
    try:
        set_ready(frame, store)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                listed_services(channel)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert health_of(channel, "BillingService") == SERVING  # the rest serves as in dev
    finally:
        server.stop(None)


def test_stop_lets_an_in_flight_call_finish(billing, store, database_url):
    patient_id = uuid.uuid4()
    with row_held(database_url, patient_id):
        in_flight = billing.stub.CreateBillingAccount.future(new_patient_request(patient_id), timeout=15)
        time.sleep(0.5)  # the call reaches the server and waits for the held row
        assert not in_flight.done()
        stopped = billing.server.stop(grace=10)
        time.sleep(0.3)
        assert not in_flight.done() and not stopped.is_set()
    # The holder rolled back: the waiting call goes on and completes within the grace.
    response = in_flight.result(timeout=10)
    assert response.status == "ACTIVE" and response.accountId != "ACC-HELD"
    assert stopped.wait(5)
    assert account_count(store, patient_id) == 1
