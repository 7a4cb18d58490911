"""ext_authz: Envoy asks it about every request that needs a token.

An asyncio gRPC server in the kit's frame (pms_common.grpc_server): this one
sits on every request's path, and answering from the cache inside the event
loop costs a fraction of a thread hand-off. Its health follows auth: with auth
unreachable every check would fail, so it says NOT_SERVING rather than pretend."""

import logging

import urllib3
from envoy.service.auth.v3 import external_auth_pb2_grpc

from pms_common.freeze import freeze_start_up_objects
from pms_common.grpc_server import READY, AsyncGrpcFrame
from pms_common.metrics import start_part_metrics
from pms_common.telemetry import start_tracing, stop_tracing

from .config import Config
from .service import AuthorizationService, AuthUnavailable, TokenValidator

log = logging.getLogger(__name__)
SERVICE_NAMES = ("envoy.service.auth.v3.Authorization",)
# How often its health asks whether auth still answers (until auth first
# answers, and while it is away, the frame asks every NOT_READY_PROBE_SECONDS).
# The gateway checks auth itself as often, so a slower probe only delays
# ext_authz's own report of it; each probe costs auth a request.
AUTH_PROBE_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 5.0


async def create_server(config=None, address=None):
    """Returns (frame, validator), not started; NOT_SERVING until its
    readiness probe sees auth."""
    config = config or Config()
    validator = TokenValidator(config.AUTH_URL, config.CACHE_SECONDS, config.AUTH_TIMEOUT_SECONDS)
    service = AuthorizationService(validator)
    frame = AsyncGrpcFrame(
        address or f"{config.BIND_HOST}:{config.PORT}",
        lambda server: external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server),
        SERVICE_NAMES,
        reflection_enabled=config.is_dev,
    )
    return frame, validator


def auth_probe(config):
    """Ready while auth answers its liveness check."""
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=1.0))

    def probe():
        status = http.request("GET", config.AUTH_URL + "/health/live").status
        if status != 200:
            raise AuthUnavailable(f"auth answered {status}")
        return READY

    return probe


async def serve(config):
    """Serves until SIGTERM/SIGINT, then NOT_SERVING and a short drain."""
    start_part_metrics(config.DATA_DIR, "ext_authz", config.BIND_HOST, config.METRICS_PORT, config.COPY)
    start_tracing("ext_authz")
    frame, _ = await create_server(config)
    await frame.start()
    log.info("serving", extra={"port": frame.port})
    freeze_start_up_objects()
    frame.follow(auth_probe(config), AUTH_PROBE_SECONDS)
    await frame.serve_until_signalled(SHUTDOWN_GRACE_SECONDS)
    stop_tracing()
