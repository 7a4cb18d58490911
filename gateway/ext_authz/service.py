"""envoy.service.auth.v3.Authorization: has auth validate the bearer token,
then allows (passing the user and role upstream) or denies (401/403/503)."""
import json
import logging
import threading
import time

import urllib3
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from pms_common.logs import request_id_var

log = logging.getLogger(__name__)
ROLES_RANK = {"USER": 1, "ADMIN": 2}
USER_HEADER, ROLE_HEADER = "x-user-email", "x-user-role"
CACHE_MAX_ENTRIES = 10_000
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


class AuthUnavailable(Exception):
    """Auth did not give a clear yes or no: the request is refused (fail closed)."""


class TokenValidator:
    """Asks auth's /validate; remembers a yes for a short, bounded time."""

    def __init__(self, auth_url, cache_seconds, timeout_seconds):
        self.validate_url = auth_url.rstrip("/") + "/validate"
        self.cache_seconds = cache_seconds
        self.http = urllib3.PoolManager(maxsize=32, retries=False,
                                        timeout=urllib3.Timeout(total=timeout_seconds))
        self._cache = {}
        self._lock = threading.Lock()

    def identity(self, token):
        """(email, role) for a valid token, None for an invalid one."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(token)
        if cached and cached[2] > now:
            return cached[0], cached[1]
        headers = {"Authorization": f"Bearer {token}"}
        if request_id_var.get():
            headers["X-Request-Id"] = request_id_var.get()
        try:
            response = self.http.request("GET", self.validate_url, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise AuthUnavailable(str(exc)) from exc
        if response.status == 401:
            return None
        if response.status != 200:
            raise AuthUnavailable(f"auth answered {response.status}")
        claims = json.loads(response.data)
        email, role = claims["sub"], claims["role"]
        valid_until = min(now + self.cache_seconds, now + max(0.0, claims["exp"] - time.time()))
        with self._lock:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[token] = (email, role, valid_until)
        return email, role


def allow(email, role):
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(headers=[
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=USER_HEADER, value=email),
                                       append_action=OVERWRITE),
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=ROLE_HEADER, value=role),
                                       append_action=OVERWRITE),
        ]))


def deny(http_code, grpc_code, message):
    # The status must be non-OK: Envoy lets a request through whenever it is OK.
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=message),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_code), body=message))


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, validator):
        self.validator = validator

    def Check(self, request, context):
        http = request.attributes.request.http
        token_id = request_id_var.set(http.headers.get("x-request-id"))
        try:
            return self._check(http.headers.get("authorization", ""),
                               request.attributes.context_extensions.get("required_role", "USER"),
                               http)
        finally:
            request_id_var.reset(token_id)

    def _check(self, authorization, required_role, http):
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return deny(http_status_pb2.Unauthorized, code_pb2.UNAUTHENTICATED,
                        "A bearer token is required (Authorization: Bearer <token>).")
        try:
            identity = self.validator.identity(token.strip())
        except AuthUnavailable as exc:
            log.error("auth unreachable; request refused", extra={"error": str(exc), "path": http.path})
            return deny(http_status_pb2.ServiceUnavailable, code_pb2.UNAVAILABLE,
                        "Authentication is unavailable; try again shortly.")
        if identity is None:
            return deny(http_status_pb2.Unauthorized, code_pb2.UNAUTHENTICATED,
                        "The token is invalid, expired or revoked.")
        email, role = identity
        if ROLES_RANK.get(role, 0) < ROLES_RANK.get(required_role, len(ROLES_RANK) + 1):
            log.info("forbidden", extra={"user": email, "role": role, "needed": required_role,
                                         "method": http.method, "path": http.path})
            return deny(http_status_pb2.Forbidden, code_pb2.PERMISSION_DENIED,
                        f"This needs the {required_role} role.")
        return allow(email, role)
