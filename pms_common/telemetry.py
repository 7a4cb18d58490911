"""OpenTelemetry traces (W3C `traceparent`), exported over OTLP when
OTEL_EXPORTER_OTLP_ENDPOINT is set; without it nothing here loads the SDK and
every function is a no-op.

The instrumentation packages make the spans: Flask (`instrument_web_app`),
SQLAlchemy (`pms_common.db.instrument_engines`), gRPC (a client's `traced_channel`, server
interceptors of the kit's frames) and confluent-kafka (the outbox
relay's producer). Only the outbox hop is carried by hand: the request's
context is written into the outbox row with the change (`current_traceparent`),
the relay publishes the event inside it (`continued_from`) so the producer
span and the Kafka `traceparent` header belong to the request's trace, and a
consumer continues it (`consumer_spans`).

Which traces are kept is the gateway's decision: Envoy starts each trace at
the ratio OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG name, and with a
parent-based sampler (the default) a part only continues the traces whose
parent is sampled, never starting one of its own (`part_sampler`): its
background work (the relay's polling, probes, a consumer's bookkeeping)
would otherwise make a trace of its own at that ratio. Under that rule a
request or an event whose trace is not sampled records nothing, so it skips
the instrumentations altogether (`follows_the_gateway`): their attributes,
wrappers and per-statement spans cost as much as a sampled request's
(bench/README.md), for nothing; its log lines still carry its trace id.
Another sampler (`always_on`, say, to trace a service called directly) is
the SDK's as set, and every request goes through the instrumentations.
The SDK reads the rest of its settings from the environment itself:
OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_* (where and how to export). A process sets its provider
once; a gunicorn web part does it in each worker (`start_tracing` after the
fork), since the exporter's thread and channel do not survive a fork.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from . import logs
from .config import env_str

log = logging.getLogger(__name__)
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
SAMPLER_VARIABLE = "OTEL_TRACES_SAMPLER"
TRACEPARENT = "traceparent"
_started: list[str] = []


def tracing_configured() -> bool:
    """Whether traces are exported (OTEL_EXPORTER_OTLP_ENDPOINT is set)."""
    return bool(env_str(ENDPOINT_VARIABLE))


def start_tracing(service: str) -> bool:
    """Sets this process's tracer provider (OTLP over gRPC, batched) when
    tracing is configured; False when not."""
    if _started:
        return True
    if not tracing_configured():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}), sampler=part_sampler())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    logs.trace_id_source = current_trace_id
    _started.append(service)
    log.info("tracing started", extra={"endpoint": env_str(ENDPOINT_VARIABLE)})
    return True


def follows_the_gateway() -> bool:
    """Whether this part records only the traces a sampled parent started (a
    parent-based OTEL_TRACES_SAMPLER, or none)."""
    return (env_str(SAMPLER_VARIABLE) or "parentbased_").startswith("parentbased_")


def part_sampler() -> Any:
    """A part's sampler: when it follows the gateway, the parent's decision
    and no trace started here; else None (the SDK's own from the environment)."""
    if not follows_the_gateway():
        return None
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    return ParentBased(root=ALWAYS_OFF)


@functools.lru_cache(maxsize=256)
def parsed_traceparent(traceparent: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C traceparent
    (version-trace-parent-flags); None when it is not one. Cached: a
    request's gate and its untraced context both ask, one after the other."""
    fields = (traceparent or "").strip().split("-")
    if len(fields) < 4 or [len(field) for field in fields[1:4]] != [32, 16, 2]:
        return None
    try:
        trace_id, span_id, flags = (int(field, 16) for field in fields[1:4])
    except ValueError:
        return None
    return (trace_id, span_id, flags) if trace_id and span_id else None


def sampled(traceparent: str | None) -> bool:
    """Whether a W3C traceparent marks its trace sampled."""
    parsed = parsed_traceparent(traceparent)
    return parsed is not None and parsed[2] & 1 == 1


def instrumented(traceparent: str | None) -> bool:
    """Whether work that continues this stored traceparent goes through the
    instrumentations: tracing has started, and the trace is sampled or this
    part does not follow the gateway."""
    return bool(_started) and (sampled(traceparent) or not follows_the_gateway())


@contextlib.contextmanager
def untraced(traceparent: str | None) -> Iterator[None]:
    """Runs the block with the instrumentations off, inside the (unsampled)
    trace the traceparent names, if any, so that log lines carry its id."""
    from opentelemetry import context, trace
    from opentelemetry.instrumentation.utils import (
        _SUPPRESS_INSTRUMENTATION_KEY,
        _SUPPRESS_INSTRUMENTATION_KEY_PLAIN,
    )

    # One context holds both the trace and the instrumentations' off switch
    # (the keys suppress_instrumentation sets): one attach per unsampled request.
    untraced_context = context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True)
    untraced_context = context.set_value(_SUPPRESS_INSTRUMENTATION_KEY_PLAIN, True, untraced_context)
    parsed = parsed_traceparent(traceparent)
    if parsed is not None:
        trace_id, span_id, flags = parsed
        parent = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))
        untraced_context = trace.set_span_in_context(trace.NonRecordingSpan(parent), untraced_context)
    token = context.attach(untraced_context)
    try:
        yield
    finally:
        context.detach(token)


def instrumentation_on() -> bool:
    """Whether the work in hand goes through the instrumentations: tracing
    has started and no `untraced` block (an unsampled request) is running."""
    if not _started:
        return False
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    return is_instrumentation_enabled()


def recording_trace() -> bool:
    """Whether work started now belongs in a recorded trace: the
    instrumentations are on, and a span of a sampled trace is current or this
    part starts traces of its own. A part that follows the gateway records
    nothing outside one (a probe, an outbox poll) whatever it does."""
    if not instrumentation_on():
        return False
    from opentelemetry import trace

    return trace.get_current_span().is_recording() or not follows_the_gateway()


def stop_tracing() -> None:
    """Sends the spans still queued (at a clean stop)."""
    if not _started:
        return
    from opentelemetry import trace

    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if shutdown is not None:
        shutdown()


def current_trace_id() -> str | None:
    """The active span's trace id (32 hex digits); None outside a span."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def instrument_web_app(app: Any) -> None:
    """Spans for the app's requests, when tracing is configured (its
    statements': `pms_common.db.instrument_engines`). Made before gunicorn
    forks: the spans start once the worker's provider is set (the tracers are
    proxies until then)."""
    if not tracing_configured():
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    # No sqlcommenter tags: the statements carry no comments (the SQLAlchemy
    # instrumentation's commenter is off), so a traced request need not gather them.
    FlaskInstrumentor.instrument_app(app, excluded_urls="health,metrics", enable_commenter=False)
    if follows_the_gateway():
        _instrument_only_sampled_requests(app)


TRACED_REQUEST = "pms.traced"  # in a request's WSGI environ: it goes through the instrumentations


def _instrument_only_sampled_requests(app: Any) -> None:
    """Sends a request whose trace is sampled through the Flask
    instrumentation, and any other to the app as it was before it, untraced.
    The instrumentation's own hooks (which its uninstrument_app finds as
    these attributes) run only for the former, in their places."""
    from flask import request

    traced_app, plain_app = app.wsgi_app, app._original_wsgi_app
    start_span, end_span = app._before_request, app._teardown_request

    def wsgi_app(wsgi_environ: dict[str, Any], start_response: Any) -> Any:
        traceparent = wsgi_environ.get("HTTP_TRACEPARENT")
        if sampled(traceparent):
            wsgi_environ[TRACED_REQUEST] = True
            return traced_app(wsgi_environ, start_response)
        with untraced(traceparent):
            return plain_app(wsgi_environ, start_response)

    def start_span_if_traced() -> None:
        if request.environ.get(TRACED_REQUEST):
            start_span()

    def end_span_if_traced(error: BaseException | None) -> None:
        if request.environ.get(TRACED_REQUEST):
            end_span(error)

    before, teardown = app.before_request_funcs[None], app.teardown_request_funcs[None]
    before[before.index(start_span)] = start_span_if_traced
    teardown[teardown.index(end_span)] = end_span_if_traced
    app.wsgi_app = wsgi_app


def traced_channel(channel: Any) -> Any:
    """`channel` through OpenTelemetry's client interceptor (a CLIENT span per
    call, `traceparent` in its metadata) once tracing has started; else
    `channel` itself. A client calls through it while `instrumentation_on()`,
    and through the plain channel otherwise: the interceptor's wrapping is
    work an unsampled call does not need."""
    if not _started:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    return intercept_channel(channel, client_interceptor())


def server_interceptors(asynchronous: bool = False) -> list[Any]:
    """The gRPC server interceptors that trace every call: OpenTelemetry's,
    for a part that does not follow the gateway; none otherwise (a part that
    follows it hands its frame `sampled_call_tracer`)."""
    if not tracing_configured() or follows_the_gateway():
        return []
    return [_otel_server_interceptor(asynchronous)]


def sampled_call_tracer(asynchronous: bool = False) -> Any | None:
    """OpenTelemetry's gRPC server interceptor, for a part that follows the
    gateway: its frame hands it each call whose trace is sampled and runs any
    other `untraced`, in the frame's own interceptor (one layer, not two, for
    an unsampled call). None when tracing is not configured or the part
    traces every call (`server_interceptors`)."""
    if not tracing_configured() or not follows_the_gateway():
        return None
    return _otel_server_interceptor(asynchronous)


def _otel_server_interceptor(asynchronous: bool) -> Any:
    from opentelemetry.instrumentation import grpc as otel_grpc

    return otel_grpc.aio_server_interceptor() if asynchronous else otel_grpc.server_interceptor()


def traced_producer(producer: Any) -> Any:
    """The producer, with a span per produce() and `traceparent` in the
    message's headers, when tracing has started."""
    if not _started:
        return producer
    from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor

    return ConfluentKafkaInstrumentor.instrument_producer(producer)


def current_traceparent() -> str | None:
    """The active span's W3C traceparent, sampled or not (to store beside an
    outbox event, or to send with a call made without the instrumentations);
    None outside a span or when tracing has not started."""
    if not _started:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@contextlib.contextmanager
def continued_from(traceparent: str | None) -> Iterator[None]:
    """Runs the block inside the trace a stored traceparent names (as is
    when tracing has not started or there is none)."""
    if not _started or not traceparent:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract({TRACEPARENT: traceparent}))
    try:
        yield
    finally:
        context.detach(token)


def header_traceparent(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The `traceparent` of a Kafka message's headers, if any."""
    for key, value in headers or ():
        if key == TRACEPARENT and value:
            return value.decode("latin-1")
    return None


@contextlib.contextmanager
def consumer_spans(topic: str, group: str, messages: Iterable[Any]) -> Iterator[None]:
    """A CONSUMER span per message that carries a traceparent (a sampled one
    when the part follows the gateway), continuing its trace, open while the
    block handles them (one batch, one transaction). The block's own work
    (the batch's statements) is recorded in the first message's trace when
    that message has a span, and goes untraced otherwise: a batch statement
    serves every event of the batch, and recording it whenever any event is
    sampled would record nearly every batch (at 10 % sampling and twenty
    events a batch, nine in ten), where this records batches at the ratio."""
    if not _started:
        yield
        return
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer(__name__)
    spans = []
    first_span = None
    only_sampled = follows_the_gateway()
    for position, message in enumerate(messages):
        traceparent = header_traceparent(message.headers())
        if traceparent is None or (only_sampled and not sampled(traceparent)):
            continue
        spans.append(
            tracer.start_span(
                f"{topic} process",
                context=propagate.extract({TRACEPARENT: traceparent}),
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": topic,
                    "messaging.consumer.group.name": group,
                    "messaging.operation.type": "process",
                    "messaging.kafka.offset": message.offset(),
                    "messaging.destination.partition.id": str(message.partition()),
                },
            )
        )
        if position == 0:
            first_span = spans[0]
    try:
        with contextlib.ExitStack() as stack:
            if first_span is not None:
                stack.enter_context(trace.use_span(first_span, end_on_exit=False))
            elif only_sampled:
                stack.enter_context(untraced(None))  # its first event is not sampled: not recorded
            yield
    except BaseException as error:
        for span in spans:
            span.record_exception(error)
            span.set_status(trace.StatusCode.ERROR)
        raise
    finally:
        for span in spans:
            span.end()
