"""ext_authz: Envoy asks it about every request that needs a token.

An asyncio gRPC server (the rest of our gRPC is the thread-pool kind): this
one sits on every request's path, and answering from the cache inside the
event loop costs a fraction of a thread hand-off."""
import asyncio
import logging
import signal

import grpc
import urllib3
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pms_common.grpc_server import OVERALL
from pms_common.heap import freeze_start_up_objects

from .config import Config
from .service import AuthorizationService, TokenValidator

log = logging.getLogger(__name__)
SERVICE_NAMES = ("envoy.service.auth.v3.Authorization",)
AUTH_PROBE_SECONDS = 2.0
SHUTDOWN_GRACE_SECONDS = 5.0


async def set_serving(health_servicer, serving):
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in (OVERALL, *SERVICE_NAMES):
        await health_servicer.set(name, status)


async def create_server(config=None, address=None):
    """Returns (server, port, health, validator), not started; NOT_SERVING until
    watch_auth sees auth."""
    config = config or Config()
    validator = TokenValidator(config.AUTH_URL, config.CACHE_SECONDS, config.AUTH_TIMEOUT_SECONDS)
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AuthorizationService(validator), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await set_serving(health_servicer, False)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address or f"{config.BIND_HOST}:{config.PORT}")
    if port == 0:
        raise OSError(f"cannot bind ext_authz to {address}")
    return server, port, health_servicer, validator


async def watch_auth(config, health_servicer):
    """Health follows auth: with auth unreachable every check would fail, so
    this server says NOT_SERVING rather than pretend."""
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=1.0))

    def auth_up():
        try:
            return http.request("GET", config.AUTH_URL + "/health/live").status == 200
        except urllib3.exceptions.HTTPError:
            return False

    serving = None
    while True:
        up = await asyncio.to_thread(auth_up)
        if up != serving:
            log.info("auth %s", "reachable" if up else "unreachable")
            await set_serving(health_servicer, up)
            serving = up
        await asyncio.sleep(AUTH_PROBE_SECONDS)


async def serve(config):
    """Serves until SIGTERM/SIGINT, then NOT_SERVING and a short drain."""
    server, port, health_servicer, _ = await create_server(config)
    await server.start()
    log.info("serving", extra={"port": port})
    freeze_start_up_objects()
    watcher = asyncio.create_task(watch_auth(config, health_servicer))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    watcher.cancel()
    await set_serving(health_servicer, False)
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    log.info("stopped")
