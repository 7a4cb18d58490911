"""The frame of every gRPC part, on a thread pool (`GrpcFrame`, grpc.server)
or on asyncio (`AsyncGrpcFrame`, grpc.aio.server).

A part supplies `register(server)` (adds its servicers), the full names of
its services and a readiness probe; the frame does the rest, the same way for
both kinds:

- health checking (grpc.health.v1): every name is NOT_SERVING until the part
  says it is ready, then follows its probe. Each service's name says whether
  its RPCs can be answered; the overall name "" says also whether the part's
  background work (an event consumer) goes on. A change is logged once;
- reflection only when asked for (dev): in production it would hand anyone
  the map of every RPC;
- the caller's x-request-id on every log line a handler writes, and a request
  whose bytes do not parse refused as the caller's error (INVALID_ARGUMENT,
  where grpc's own parsing would answer INTERNAL);
- Prometheus figures of every unary call: grpc_server_handled_total by
  service, method and status code, grpc_server_handling_seconds by method
  (pms_common.metrics); with tracing configured, the caller's trace continued
  (pms_common.telemetry);
- graceful shutdown on SIGTERM/SIGINT: NOT_SERVING for good first, so load
  balancers stop sending, then stop(grace) lets in-flight calls finish.

    frame = GrpcFrame(address, register, SERVICE_NAMES, reflection_enabled=config.is_dev)
    frame.start()
    frame.set_readiness(READY)                # once its store answers
    frame.follow(probe)                       # health follows probe() from now on
    frame.serve_until_signalled(grace)

The asyncio frame is used the same way, with `await` on start, set_readiness
and serve_until_signalled; its servicers' methods must be coroutines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import metrics, telemetry
from .db_errors import describe_error
from .logs import request_id_var
from .worker import stop_on_signals

log = logging.getLogger(__name__)
OVERALL = ""  # the health service's name for "the whole server"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROBE_INTERVAL_SECONDS = 2.0
# A part that is not ready probes this often whatever its interval, so that it
# says SERVING within a fraction of a second of its peer answering (at start,
# or when an outage ends); the gateway looks at an unhealthy host as often.
NOT_READY_PROBE_SECONDS = 0.25
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
UNPARSEABLE = "the request does not parse (are its strings UTF-8?)"


@dataclass(frozen=True)
class Readiness:
    """What the part can do now: answer its RPCs (`serving`), and do its
    background work too (`working`); `reason` says why not, for the log."""

    serving: bool = True
    working: bool = True
    reason: str | None = field(default=None, compare=False)


READY = Readiness()
NOT_READY = Readiness(serving=False, working=False)
Probe = Callable[[], Readiness]


def probed(probe: Probe) -> Readiness:
    """The probe's answer; a probe that raises (its peer is away) means not ready."""
    try:
        return probe()
    except Exception as error:  # the reason goes to the log line of the change
        return Readiness(serving=False, working=False, reason=describe_error(error))


def next_probe_in(readiness: Readiness, interval: float) -> float:
    """Seconds until the next probe: `interval` while the part is fully ready,
    at most NOT_READY_PROBE_SECONDS while it is not."""
    if readiness.serving and readiness.working:
        return interval
    return min(interval, NOT_READY_PROBE_SECONDS)


# Each (metric, service, method, code)'s labelled series, looked up once.
_call_series: dict[tuple[Any, Any, str, str, str], tuple[Any, Any]] = {}


class _UnaryCall:
    """A unary handler's pieces: the servicer's method, the request's parser,
    the caller's request id, and the RPC's names for its figures."""

    def __init__(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails, metadata: dict[str, Any]
    ) -> None:
        self.handler = handler
        self.method, self.parse = handler.unary_unary, handler.request_deserializer
        self.request_id = metadata.get("x-request-id")
        # "/package.Service/Method"
        self.service_name, _, self.method_name = details.method.lstrip("/").rpartition("/")
        self.started = time.perf_counter()

    def finished(self, code: grpc.StatusCode | None, failed: bool) -> None:
        """Counts the call by its status code (set by the handler, else OK, or
        UNKNOWN for a handler that raised without one) and observes its time."""
        if code is None:
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        counts, durations = handled_total(), handling_seconds()
        key = (counts, durations, self.service_name, self.method_name, code.name)
        series = _call_series.get(key)
        if series is None:
            series = _call_series[key] = (
                counts.labels(self.service_name, self.method_name, code.name),
                durations.labels(self.service_name, self.method_name),
            )
        series[0].inc()
        series[1].observe(time.perf_counter() - self.started)

    def parsed(self, request_bytes: bytes) -> Any:
        """The request message; None when its bytes are not one."""
        try:
            return self.parse(request_bytes) if self.parse else request_bytes
        except DecodeError:
            return None

    def handler_with(self, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
        """The same RPC, parsed by `behaviour` instead of by grpc."""
        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=None, response_serializer=self.handler.response_serializer
        )


def handled_total() -> Any:
    return metrics.counter(
        "grpc_server_handled_total",
        "RPCs completed on the server, by status code",
        ("grpc_service", "grpc_method", "grpc_code"),
    )


def handling_seconds() -> Any:
    return metrics.histogram(
        "grpc_server_handling_seconds",
        "Time the server took to answer an RPC",
        ("grpc_service", "grpc_method"),
    )


def _unary(
    handler: grpc.RpcMethodHandler | None, details: grpc.HandlerCallDetails, metadata: dict[str, Any]
) -> _UnaryCall | None:
    if handler is None or handler.unary_unary is None:
        return None  # streams (health's Watch, reflection) pass as they are
    return _UnaryCall(handler, details, metadata)


class _RequestFraming:
    """What both request-id interceptors share: the trace gate, and the call's
    handler rebuilt around the frame's behaviour (`_behaviour`, sync or async)."""

    def __init__(self, sampled_call_tracer: Any | None = None) -> None:
        self.tracer = sampled_call_tracer

    def _gate(self, details: grpc.HandlerCallDetails) -> tuple[dict[str, Any], bool, str | None]:
        """(the call's metadata, whether it runs untraced, its traceparent).
        With a tracer (the part follows the gateway's sampling) a call of a
        sampled trace goes through it and any other runs untraced, its trace
        id still on its log lines; without one every call goes as it is."""
        metadata = dict(details.invocation_metadata or ())
        if self.tracer is None:
            return metadata, False, None
        traceparent = metadata.get(telemetry.TRACEPARENT)
        return metadata, not telemetry.sampled(traceparent), traceparent

    def _framed(
        self,
        handler: grpc.RpcMethodHandler | None,
        details: grpc.HandlerCallDetails,
        metadata: dict[str, Any],
        untraced: bool = False,
        traceparent: str | None = None,
    ) -> grpc.RpcMethodHandler | None:
        call = _unary(handler, details, metadata)
        if call is None:
            return handler
        scope = (lambda: telemetry.untraced(traceparent)) if untraced else contextlib.nullcontext
        return call.handler_with(self._behaviour(call, scope))

    def _behaviour(self, call: _UnaryCall, scope: Callable[[], Any]) -> Callable[..., Any]:
        raise NotImplementedError


class RequestIdInterceptor(_RequestFraming, grpc.ServerInterceptor):
    """The request-id, parsing and trace-gate interceptor of a thread-pool server."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata, untraced, traceparent = self._gate(handler_call_details)
        if self.tracer is not None and not untraced:
            return self.tracer.intercept_service(
                lambda details: self._framed(continuation(details), details, metadata),
                handler_call_details,
            )
        handler = continuation(handler_call_details)
        return self._framed(handler, handler_call_details, metadata, untraced, traceparent)

    def _behaviour(self, call: _UnaryCall, scope: Callable[[], Any]) -> Callable[..., Any]:
        def parsed_with_request_id(request_bytes: bytes, context: grpc.ServicerContext) -> Any:
            call.started = time.perf_counter()
            failed = True
            token = request_id_var.set(call.request_id)
            try:
                with scope():
                    request = call.parsed(request_bytes)
                    if request is None:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNPARSEABLE)
                    response = call.method(request, context)
                failed = False
                return response
            finally:
                request_id_var.reset(token)
                call.finished(context.code(), failed)

        return parsed_with_request_id


class AsyncRequestIdInterceptor(_RequestFraming, grpc.aio.ServerInterceptor):
    """The same for an asyncio server."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata, untraced, traceparent = self._gate(handler_call_details)
        if self.tracer is not None and not untraced:

            async def framed(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return self._framed(await continuation(details), details, metadata)

            return await self.tracer.intercept_service(framed, handler_call_details)
        handler = await continuation(handler_call_details)
        return self._framed(handler, handler_call_details, metadata, untraced, traceparent)

    def _behaviour(self, call: _UnaryCall, scope: Callable[[], Any]) -> Callable[..., Any]:
        async def parsed_with_request_id(request_bytes: bytes, context: grpc.aio.ServicerContext) -> Any:
            call.started = time.perf_counter()
            failed = True
            token = request_id_var.set(call.request_id)
            try:
                with scope():
                    request = call.parsed(request_bytes)
                    if request is None:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNPARSEABLE)
                    response = await call.method(request, context)
                failed = False
                return response
            finally:
                request_id_var.reset(token)
                call.finished(context.code(), failed)

        return parsed_with_request_id


def server_interceptors(asynchronous: bool = False) -> list[Any]:
    """A frame's interceptors: tracing's, if it traces every call, then the
    request-id one (which gates the calls by their sampling otherwise)."""
    tracing = telemetry.server_interceptors(asynchronous)
    tracer = telemetry.sampled_call_tracer(asynchronous)
    if asynchronous:
        return [*tracing, AsyncRequestIdInterceptor(tracer)]
    return [*tracing, RequestIdInterceptor(tracer)]


class _Frame:
    """What both frames share: the server's parts, and which health statuses
    a readiness means."""

    def __init__(
        self,
        server: Any,
        health_servicer: Any,
        address: str,
        register: Callable[[Any], None],
        service_names: Iterable[str],
        reflection_enabled: bool,
    ) -> None:
        self.server, self.health = server, health_servicer
        self.service_names = tuple(service_names)
        register(server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if reflection_enabled:
            reflection.enable_server_reflection(
                (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        self.port: int = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC server to {address}")
        self.draining = threading.Event()
        self._readiness: Readiness | None = None
        self._lock = threading.Lock()

    def _changes(self, readiness: Readiness) -> list[tuple[str, int]]:
        """The statuses to set for this readiness: none if it is no change or
        the server drains. A change after the first is logged."""
        with self._lock:
            if self.draining.is_set() or readiness == self._readiness:
                return []
            if self._readiness is not None:
                log.info(
                    "health changed",
                    extra={
                        "serving": readiness.serving,
                        "working": readiness.working,
                        "reason": readiness.reason,
                    },
                )
            self._readiness = readiness
        service_status = SERVING if readiness.serving else NOT_SERVING
        overall_status = SERVING if readiness.serving and readiness.working else NOT_SERVING
        return [(OVERALL, overall_status), *((name, service_status) for name in self.service_names)]

    def _begin_draining(self, signal_name: str | None, grace: float) -> bool:
        """True the first time: the caller then stops the server."""
        with self._lock:
            if self.draining.is_set():
                return False
            self.draining.set()
        log.info("signal received: draining", extra={"signal": signal_name, "grace_s": grace})
        return True


class GrpcFrame(_Frame):
    """A grpc.server on a thread pool, in the frame; NOT_SERVING until set_readiness."""

    def __init__(
        self,
        address: str,
        register: Callable[[grpc.Server], None],
        service_names: Iterable[str],
        *,
        max_workers: int = 16,
        reflection_enabled: bool = False,
    ) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=server_interceptors(),
        )
        super().__init__(
            server, health.HealthServicer(), address, register, service_names, reflection_enabled
        )
        self.set_readiness(NOT_READY)

    def start(self) -> None:
        self.server.start()

    def set_readiness(self, readiness: Readiness) -> None:
        for name, status in self._changes(readiness):
            self.health.set(name, status)

    def follow(self, probe: Probe, interval: float = PROBE_INTERVAL_SECONDS) -> threading.Thread:
        """Health follows probe() from now until the server drains (a thread),
        probing every `interval` while ready (next_probe_in)."""

        def watch() -> None:
            while not self.draining.is_set():
                readiness = probed(probe)
                self.set_readiness(readiness)
                self.draining.wait(next_probe_in(readiness, interval))

        watcher = threading.Thread(target=watch, name="health-probe", daemon=True)
        watcher.start()
        return watcher

    def serve_until_signalled(self, grace: float, stop: threading.Event | None = None) -> None:
        """Blocks until SIGTERM/SIGINT (or `stop`, set by them: stop_on_signals),
        then drains and returns once stopped. The drain runs here, not in the
        signal handler: grpc's stop takes locks the interrupted thread may hold."""
        stop = stop or stop_on_signals()
        stop.wait()
        if self._begin_draining(getattr(stop, "signal_name", None), grace):
            self.health.enter_graceful_shutdown()
            self.server.stop(grace).wait()
        log.info("stopped")


class AsyncGrpcFrame(_Frame):
    """A grpc.aio server in the frame; NOT_SERVING until set_readiness. Build it
    inside the event loop."""

    def __init__(
        self,
        address: str,
        register: Callable[[grpc.aio.Server], None],
        service_names: Iterable[str],
        *,
        reflection_enabled: bool = False,
    ) -> None:
        server = grpc.aio.server(interceptors=server_interceptors(asynchronous=True))
        super().__init__(
            server, health.aio.HealthServicer(), address, register, service_names, reflection_enabled
        )
        self.watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # asyncio's health servicer starts out SERVING, and setting it is a coroutine.
        await self.set_readiness(NOT_READY)
        await self.server.start()

    async def set_readiness(self, readiness: Readiness) -> None:
        for name, status in self._changes(readiness):
            await self.health.set(name, status)

    def follow(self, probe: Probe, interval: float = PROBE_INTERVAL_SECONDS) -> asyncio.Task[None]:
        """Health follows probe() (run on a thread: probes block) from now
        until the server drains (a task of the running loop), probing every
        `interval` while ready (next_probe_in)."""

        async def watch() -> None:
            while not self.draining.is_set():
                readiness = await asyncio.to_thread(probed, probe)
                await self.set_readiness(readiness)
                await asyncio.sleep(next_probe_in(readiness, interval))

        # Held here: the loop keeps only a weak reference to its tasks.
        self.watcher = asyncio.create_task(watch(), name="health-probe")
        return self.watcher

    async def serve_until_signalled(self, grace: float) -> None:
        """Waits for SIGTERM/SIGINT, then drains and returns once stopped."""
        received: asyncio.Queue[int] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, received.put_nowait, signum)
        if self._begin_draining(signal.Signals(await received.get()).name, grace):
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
        log.info("stopped")
