"""Which spans a part records: the gateway decides which traces are kept, a
part follows its parent's decision and starts no trace of its own."""

import json
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from patient.outbox import event_headers
from pms_common import telemetry
from pms_common.telemetry import SAMPLER_VARIABLE, TRACEPARENT, instrumented, part_sampler, sampled
from stack.config import ROOT
from stack.harness import free_port
from stack.parts import tansu_command, tcp_open
from tests.support import wait_for


def parent(sampled):
    context = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(NonRecordingSpan(context))


def tracer():
    return TracerProvider(sampler=part_sampler()).get_tracer("test")


def test_a_part_records_only_what_a_sampled_parent_started(monkeypatch):
    for setting in (None, "parentbased_traceidratio", "parentbased_always_on"):
        if setting is None:
            monkeypatch.delenv(SAMPLER_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(SAMPLER_VARIABLE, setting)
        spans = tracer()
        assert spans.start_span("request", context=parent(sampled=True)).is_recording()
        assert not spans.start_span("request", context=parent(sampled=False)).is_recording()
        # Background work (a relay's poll, a probe) with no trace around it: not a trace of its own.
        assert not spans.start_span("SELECT outbox").is_recording()


def test_a_sampler_that_is_not_parent_based_is_the_sdks(monkeypatch):
    monkeypatch.setenv(SAMPLER_VARIABLE, "always_on")
    assert part_sampler() is None
    assert tracer().start_span("a service called directly").is_recording()


def test_a_traceparent_says_whether_its_trace_is_sampled():
    assert sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03")
    assert not sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    for malformed in (None, "", "00-abc", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz"):
        assert not sampled(malformed)


# Run in a process of its own: a tracer provider is set once per process.
WEB_AND_CONSUMER = """
import json
import sqlalchemy as sa
from flask import Flask
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pms_common import db, grpc_server, telemetry

spans = InMemorySpanExporter()
provider = TracerProvider(sampler=telemetry.part_sampler())
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)
engine = sa.create_engine("sqlite://")
telemetry._started.append("probe")
app = Flask("probe")
seen = {}

@app.get("/patients/<name>")
def read(name):
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
        fires_events = connection._has_events or engine._has_events
    seen[name] = (telemetry.current_trace_id(), is_instrumentation_enabled(), fires_events)
    return {"ok": True}

telemetry.instrument_web_app(app)
db.instrument_engines([engine])
# The instrumentation's pool listeners feed a metric nothing exports: instrument_engines drops them.
otel_pool_listeners = [
    listener.__module__
    for event in db.POOL_EVENTS
    for listener in getattr(engine.pool.dispatch, event)
    if listener.__module__.startswith("opentelemetry")
]
client = app.test_client()
sampled, unsampled = ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0" + flag for flag in "10")
client.get("/patients/sampled", headers={"traceparent": sampled})
client.get("/patients/unsampled", headers={"traceparent": unsampled})
client.get("/patients/none")
# Outside any trace (a probe, an outbox poll) a statement is recorded nowhere, and skips the dispatch.
with engine.connect() as connection:
    connection.execute(sa.text("SELECT 1"))
    outside_fires_events = connection._has_events or engine._has_events
web = [(span.name, format(span.context.trace_id, "032x")) for span in spans.get_finished_spans()]
spans.clear()
# An engine made later through pms_common.db (the relay's lease) is not traced behind
# instrument_engines' back, even inside a sampled trace.
late_engine = db.create_engine("sqlite://")
with telemetry.continued_from(sampled), late_engine.connect() as connection:
    connection.execute(sa.text("SELECT 2"))
late = [span.name for span in spans.get_finished_spans()]
spans.clear()

class Message:
    def __init__(self, traceparent):
        self._headers = [("traceparent", traceparent.encode())]
    def headers(self): return self._headers
    def offset(self): return 7
    def partition(self): return 0

instrumented, consumer = [], []
batches = (
    [Message(unsampled)], [Message(sampled), Message(unsampled)], [Message(unsampled), Message(sampled)]
)
for batch in batches:
    with telemetry.consumer_spans("patient", "analytics-service", batch):
        instrumented.append(is_instrumentation_enabled())
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    consumer.append(sorted(span.name for span in spans.get_finished_spans()))
    spans.clear()

import grpc
from concurrent import futures
from pms_common.logs import request_id_var

called = []

def echo(request, context):
    called.append([telemetry.current_trace_id(), is_instrumentation_enabled(), request_id_var.get()])
    return request

handler = grpc.method_handlers_generic_handler(
    "probe.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}
)
from patient.billing_client import BillingClient
from pms_common.protos import billing_service_pb2

def open_account(request, context):
    called_by_client.append([telemetry.current_trace_id(), is_instrumentation_enabled()])
    return billing_service_pb2.BillingResponse(accountId="a-1")

billing = grpc.method_handlers_generic_handler("BillingService", {
    "CreateBillingAccount": grpc.unary_unary_rpc_method_handler(
        open_account,
        request_deserializer=billing_service_pb2.BillingRequest.FromString,
        response_serializer=billing_service_pb2.BillingResponse.SerializeToString,
    )
})
server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=grpc_server.server_interceptors())
server.add_generic_rpc_handlers([handler, billing])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    call = channel.unary_unary("/probe.Echo/Call")
    for traceparent in (sampled, unsampled):
        call(b"x", metadata=[("traceparent", traceparent), ("x-request-id", traceparent[-2:])])
rpc = [span.name for span in spans.get_finished_spans()]
spans.clear()

# The patient service's client, inside a sampled and an unsampled request's trace and outside any.
called_by_client = []
billing_client = BillingClient(f"127.0.0.1:{port}", 5)
with telemetry.continued_from(sampled):
    billing_client.open_account("p-1", "Ann", "ann@example.com")
with telemetry.untraced(unsampled):
    billing_client.open_account("p-2", "Ann", "ann@example.com")
billing_client.open_account("p-3", "Ann", "ann@example.com")
server.stop(None)
client_rpc = sorted((span.name, span.kind.name) for span in spans.get_finished_spans())
spans.clear()

import asyncio

async def echo_async(request, context):
    called_async.append([telemetry.current_trace_id(), is_instrumentation_enabled(), request_id_var.get()])
    return request

async def call_async_server():
    handler = grpc.method_handlers_generic_handler(
        "probe.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo_async)}
    )
    server = grpc.aio.server(interceptors=grpc_server.server_interceptors(asynchronous=True))
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/probe.Echo/Call")
        for traceparent in (sampled, unsampled):
            await call(b"x", metadata=[("traceparent", traceparent), ("x-request-id", traceparent[-2:])])
    await server.stop(None)

called_async = []
asyncio.run(call_async_server())
rpc_async = [span.name for span in spans.get_finished_spans()]
print(json.dumps({"web": web, "seen": seen, "consumer": consumer, "instrumented": instrumented,
                  "called": called, "rpc": rpc, "called_async": called_async, "rpc_async": rpc_async,
                  "called_by_client": called_by_client, "client_rpc": client_rpc,
                  "otel_pool_listeners": otel_pool_listeners, "late": late,
                  "outside_fires_events": outside_fires_events}))
"""


def test_only_a_sampled_trace_goes_through_the_instrumentations(tmp_path):
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_SAMPLER": ""}
    run = subprocess.run(
        [sys.executable, "-c", WEB_AND_CONSUMER],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    # The sampled request: its server span and its statement's, in the gateway's trace (no
    # "connect" span for the pool's checkout: pms_common.db.instrument_engines drops it).
    assert sorted(result["web"]) == [["GET /patients/<name>", trace_id], ["SELECT", trace_id]]
    assert result["otel_pool_listeners"] == []
    assert result["late"] == []
    # The others skip the instrumentations, their statements SQLAlchemy's event dispatch too;
    # the unsampled one's log lines still carry its trace id.
    assert result["seen"] == {
        "sampled": [trace_id, True, True],
        "unsampled": [trace_id, False, False],
        "none": [None, False, False],
    }
    assert result["outside_fires_events"] is False
    # A batch of unsampled events records nothing. A sampled event has its span; the batch's
    # statement is recorded in its trace only when it is the batch's first event.
    assert result["consumer"] == [[], ["SELECT", "patient process"], ["patient process"]]
    assert result["instrumented"] == [False, True, False]
    # A gRPC call likewise: the sampled one is a server span of its trace, the other runs untraced.
    # The frame's one interceptor takes the caller's request id either way.
    assert result["called"] == [[trace_id, True, "01"], [trace_id, False, "00"]]
    assert result["rpc"] == ["/probe.Echo/Call"]
    # The billing client calls through the tracing interceptor only for a sampled trace (a
    # client and a server span); an unsampled one's call carries its traceparent for the logs.
    # Outside any trace (a retry of the relay's loop) the part starts none: nothing is recorded.
    assert result["called_by_client"][:2] == [[trace_id, True], [trace_id, False]]
    assert result["called_by_client"][2][1] is False
    assert result["client_rpc"] == [
        ["/BillingService/CreateBillingAccount", "CLIENT"],
        ["/BillingService/CreateBillingAccount", "SERVER"],
    ]
    # And on the asyncio frame (ext_authz's).
    assert result["called_async"] == [[trace_id, True, "01"], [trace_id, False, "00"]]
    assert result["rpc_async"] == ["/probe.Echo/Call"]


def test_the_relay_sends_through_the_instrumentation_only_the_events_of_sampled_traces(monkeypatch):
    """An unsampled event is sent by the plain producer with its stored
    traceparent as it is; a sampled one by the tracing producer, which sets its own."""
    trace_and_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
    sampled_trace, unsampled_trace = f"{trace_and_parent}-01", f"{trace_and_parent}-00"
    monkeypatch.delenv(SAMPLER_VARIABLE, raising=False)
    monkeypatch.setattr(telemetry, "_started", ["patient-worker"])
    assert instrumented(sampled_trace)
    assert not instrumented(unsampled_trace)
    assert not instrumented(None)
    row = SimpleNamespace(event_id=uuid.uuid4(), event_type="PATIENT_CREATED", trace_context=unsampled_trace)
    assert (TRACEPARENT, unsampled_trace) in event_headers(row, instrumented(row.trace_context))
    row.trace_context = sampled_trace
    assert TRACEPARENT not in dict(event_headers(row, instrumented(row.trace_context)))
    # A sampler of the part's own traces every send; without tracing none is.
    monkeypatch.setenv(SAMPLER_VARIABLE, "always_on")
    assert instrumented(unsampled_trace)
    monkeypatch.setattr(telemetry, "_started", [])
    assert not instrumented(sampled_trace)


def test_the_embedded_broker_does_not_take_the_services_otlp_endpoint():
    # Tansu reads OTEL_EXPORTER_OTLP_ENDPOINT as its own metrics endpoint
    # (OTLP/HTTP) and refuses to start on one it cannot parse: an empty value
    # shows whether the variable reaches it.
    port = free_port()
    env = {**os.environ, telemetry.ENDPOINT_VARIABLE: ""}
    broker = subprocess.Popen(tansu_command(port), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: broker.poll() is not None or listening(port), timeout=20, message="the broker")
        assert broker.poll() is None, broker.communicate()[0].decode()
    finally:
        broker.terminate()
        broker.wait(10)


def listening(port):
    try:
        return tcp_open(port)
    except OSError:
        return False
