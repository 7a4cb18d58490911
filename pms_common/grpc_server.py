"""The frame of a gRPC service: health checking, reflection, request ids,
graceful shutdown on SIGTERM (health goes NOT_SERVING, in-flight calls finish)."""
import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .logs import request_id_var

log = logging.getLogger(__name__)
OVERALL = ""  # the health service's name for "the whole server"


class RequestIdInterceptor(grpc.ServerInterceptor):
    """Puts the caller's x-request-id on every log line the handler writes."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        request_id = dict(handler_call_details.invocation_metadata or ()).get("x-request-id")
        if handler is None or handler.unary_unary is None or not request_id:
            return handler
        inner = handler.unary_unary

        def with_request_id(request, context):
            token = request_id_var.set(request_id)
            try:
                return inner(request, context)
            finally:
                request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            with_request_id, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def create_server(address, register, service_names, max_workers=16):
    """Builds (not starts) a server on `address` ("host:0" picks a free port).

    `register(server)` adds the service's servicers. Health starts NOT_SERVING:
    the caller sets SERVING once its store is ready. Returns (server, port, health).
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         interceptors=[RequestIdInterceptor()])
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (OVERALL, *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return server, port, health_servicer


def set_serving(health_servicer, service_names, serving=True):
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in (OVERALL, *service_names):
        health_servicer.set(name, status)


def serve_until_signalled(server, health_servicer, service_names, grace=10.0):
    """Blocks until SIGTERM/SIGINT, then drains: NOT_SERVING first so load
    balancers stop sending, then stop(grace) lets in-flight calls finish."""
    stopping = threading.Event()

    def _stop(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log.info("signal %s: draining for up to %.0fs", signum, grace)
        set_serving(health_servicer, service_names, serving=False)
        server.stop(grace)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait_for_termination()
    log.info("stopped")
