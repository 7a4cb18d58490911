"""ext_authz: Envoy asks it about every request that needs a token."""
import logging
import threading

import urllib3
from envoy.service.auth.v3 import external_auth_pb2_grpc

from pms_common.grpc_server import create_server as create_grpc_server, set_serving

from .config import Config
from .service import AuthorizationService, TokenValidator

log = logging.getLogger(__name__)
SERVICE_NAMES = ("envoy.service.auth.v3.Authorization",)
AUTH_PROBE_SECONDS = 2.0


def create_server(config=None, address=None):
    """Returns (server, port, health, validator); not started."""
    config = config or Config()
    validator = TokenValidator(config.AUTH_URL, config.CACHE_SECONDS, config.AUTH_TIMEOUT_SECONDS)
    servicer = AuthorizationService(validator)
    server, port, health = create_grpc_server(
        address or f"{config.BIND_HOST}:{config.PORT}",
        lambda srv: external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, srv),
        SERVICE_NAMES)
    return server, port, health, validator


def watch_auth(config, health, stop: threading.Event):
    """Health follows auth: with auth unreachable every check would fail, so
    this server says NOT_SERVING rather than pretend."""
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=1.0))
    serving = None
    while not stop.is_set():
        try:
            up = http.request("GET", config.AUTH_URL + "/health/live").status == 200
        except urllib3.exceptions.HTTPError:
            up = False
        if up != serving:
            log.info("auth %s", "reachable" if up else "unreachable")
            set_serving(health, SERVICE_NAMES, up)
            serving = up
        stop.wait(AUTH_PROBE_SECONDS)
