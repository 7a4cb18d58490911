"""Traces across every hop: the system started with OTEL_EXPORTER_OTLP_ENDPOINT
at an OTLP/gRPC collector in this process (built from opentelemetry-proto's
service stubs); a create through the gateway is one trace from Envoy to the
analytics consumer."""

import json
import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from stack.harness import RunningSystem, free_port
from tests.e2e.conftest import TEST_SETTINGS
from tests.support import wait_for

pytestmark = pytest.mark.e2e

# Each hop of a create, by the service.name its spans carry.
HOPS = ("gateway", "ext_authz", "patient", "billing", "patient-worker", "analytics-consumer")
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # opentelemetry.proto.trace.v1.Span.SpanKind


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it receives, with the service.name of its resource."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        attribute.value.string_value
                        for attribute in resource_spans.resource.attributes
                        if attribute.key == "service.name"
                    ),
                    None,
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id):
        with self.lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector():
    received = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield received, f"http://127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="module")
def traced_system(collector, tmp_path_factory):
    _, endpoint = collector
    settings = {
        **TEST_SETTINGS,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the collector soon after they end
    }
    running = RunningSystem(tmp_path_factory.mktemp("traced"), settings).start()
    yield running
    running.stop()


def test_a_create_is_one_trace_from_the_gateway_to_the_analytics_consumer(collector, traced_system):
    received, _ = collector
    api = traced_system.session()
    created = api.post(
        f"{traced_system.url}/api/patients",
        json={
            "name": "Traced Patient",
            "email": f"traced-{time.time_ns()}@example.com",
            "address": "1 Span St",
            "dateOfBirth": "1975-04-05",
            "registeredDate": "2024-02-01",
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text

    def create_span():
        """The patient service's span of the create (a server span of POST /patients)."""
        with received.lock:
            for service, span in received.spans:
                attributes = {a.key: a.value.string_value for a in span.attributes}
                route = attributes.get("http.route", span.name.partition(" ")[2])
                method = attributes.get(
                    "http.request.method", attributes.get("http.method", span.name.split(" ")[0])
                )
                if service == "patient" and span.kind == SERVER and (method, route) == ("POST", "/patients"):
                    return span
        return None

    trace_id = wait_for(create_span, timeout=30, message="patient's span of the create").trace_id

    def every_hop():
        services = {service for service, _ in received.in_trace(trace_id)}
        return set(HOPS) <= services and services

    try:
        wait_for(every_hop, timeout=60, interval=0.25, message="spans of every hop in the create's trace")
    finally:
        found = received.in_trace(trace_id)
        print(json.dumps(sorted({(service, span.name, span.kind) for service, span in found})))
    spans = received.in_trace(trace_id)
    kinds = {(service, span.kind) for service, span in spans}
    assert ("patient-worker", PRODUCER) in kinds  # the relay's publish of the outbox row
    assert ("analytics-consumer", CONSUMER) in kinds  # the consumer's handling of the event
    database_spans = {
        service
        for service, span in spans
        if span.kind == CLIENT and any(a.key == "db.system" for a in span.attributes)
    }
    assert {"patient", "billing"} <= database_spans  # SQLAlchemy's statements
    # Envoy's span is the root: every other span descends from it.
    by_id = {span.span_id: (service, span) for service, span in spans}
    roots = [(service, span) for service, span in spans if span.parent_span_id not in by_id]
    assert [service for service, _ in roots] == ["gateway"], roots

    # The trace id is on the create's log lines.
    trace_hex = trace_id.hex()

    def logged_with_trace_id(part):
        for line in traced_system.log_lines(part):
            text = line.split("| ", 1)[-1]
            if text.startswith("{") and json.loads(text).get("trace_id") == trace_hex:
                return True
        return False

    wait_for(
        lambda: logged_with_trace_id("patient"), timeout=10, message="patient's log line with the trace id"
    )
