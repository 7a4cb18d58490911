"""envoy.service.auth.v3.Authorization: has auth validate the bearer token,
then allows (passing the user and role upstream) or denies (401/403/503)."""

import asyncio
import json
import logging
import threading
import time

import urllib3
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from pms_common import metrics
from pms_common.identity import ADMIN, ROLE_HEADER, USER_HEADER, bearer_token, role_allows

log = logging.getLogger(__name__)
CACHE_MAX_ENTRIES = 10_000
ROUTE_METADATA = "pms.authz"  # the routes' metadata namespace (gateway/envoy.yaml)
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def cache_lookups():
    """Hits over all lookups is the cache's hit ratio."""
    return metrics.counter(
        "pms_authz_cache_lookups_total",
        "Token checks answered from the cache (hit) or by auth (miss)",
        ("result",),
    )


class AuthUnavailable(Exception):
    """Auth did not give a clear yes or no: the request is refused (fail closed)."""


class TokenValidator:
    """Asks auth's /validate; remembers a yes for a short, bounded time."""

    def __init__(self, auth_url, cache_seconds, timeout_seconds):
        self.validate_url = auth_url.rstrip("/") + "/validate"
        self.cache_seconds = cache_seconds
        self.http = urllib3.PoolManager(
            maxsize=32, retries=False, timeout=urllib3.Timeout(total=timeout_seconds)
        )
        self._cache = {}
        self._lock = threading.Lock()

    def cached(self, token):
        """(email, role, seconds this yes may still be reused) if auth said
        yes to this token recently, else None."""
        with self._lock:
            entry = self._cache.get(token)
        if entry:
            remaining = entry[2] - time.monotonic()
            if remaining > 0:
                return entry[0], entry[1], remaining
        return None

    def identity(self, token, request_id=None):
        """Asks auth: (email, role, seconds this yes may be reused) for a valid
        token, None for an invalid one."""
        now = time.monotonic()
        headers = {"Authorization": f"Bearer {token}"}
        if request_id:
            headers["X-Request-Id"] = request_id
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
        reusable_for = min(self.cache_seconds, max(0.0, claims["exp"] - time.time()))
        with self._lock:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[token] = (email, role, now + reusable_for)
        return email, role, reusable_for


def allow(email, role, reusable_for):
    """The yes, with the identity headers, and the same facts as dynamic
    metadata for the gateway's memo (gateway/authz_memo.lua): who, and for
    how many more ms this yes may be reused without asking again."""
    grant = struct_pb2.Struct()
    grant.update({"user": email, "role": role, "reusable_for_ms": int(reusable_for * 1000)})
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        dynamic_metadata=grant,
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=USER_HEADER.lower(), value=email), append_action=OVERWRITE
                ),
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=ROLE_HEADER.lower(), value=role), append_action=OVERWRITE
                ),
            ]
        ),
    )


def deny(http_code, grpc_code, message, caller=None):
    # The status must be non-OK: Envoy lets a request through whenever it is OK.
    # A known caller refused (a 403) is named in dynamic metadata for the
    # gateway's audit log; without `reusable_for_ms` the memo keeps nothing.
    named = None
    if caller is not None:
        named = struct_pb2.Struct()
        named.update({"user": caller[0], "role": caller[1]})
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=message),
        dynamic_metadata=named,
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_code), body=message
        ),
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    """Runs on grpc.aio: a check answered from the cache never leaves the event
    loop (a thread hand-off would cost more than the check); asking auth,
    which blocks, goes to a thread."""

    def __init__(self, validator):
        self.validator = validator

    async def Check(self, request, context):
        http = request.attributes.request.http
        # The route's metadata names the role; a route that forgot to gets the strictest.
        route = request.attributes.route_metadata_context.filter_metadata.get(ROUTE_METADATA)
        required_role = route["required_role"] if route and "required_role" in route else ADMIN
        token = bearer_token(http.headers.get("authorization"))
        if token is None:
            return deny(
                http_status_pb2.Unauthorized,
                code_pb2.UNAUTHENTICATED,
                "A bearer token is required (Authorization: Bearer <token>).",
            )
        identity = self.validator.cached(token)
        cache_lookups().labels("miss" if identity is None else "hit").inc()
        if identity is None:
            request_id = http.headers.get("x-request-id")
            try:
                identity = await asyncio.to_thread(self.validator.identity, token, request_id)
            except AuthUnavailable as exc:
                log.error(
                    "auth unreachable; request refused",
                    extra={"error": str(exc), "path": http.path, "request_id": request_id},
                )
                return deny(
                    http_status_pb2.ServiceUnavailable,
                    code_pb2.UNAVAILABLE,
                    "Authentication is unavailable; try again shortly.",
                )
        if identity is None:
            return deny(
                http_status_pb2.Unauthorized,
                code_pb2.UNAUTHENTICATED,
                "The token is invalid, expired or revoked.",
            )
        email, role, reusable_for = identity
        if not role_allows(role, required_role):
            log.info(
                "forbidden",
                extra={
                    "user": email,
                    "role": role,
                    "needed": required_role,
                    "method": http.method,
                    "path": http.path,
                    "request_id": http.headers.get("x-request-id"),
                },
            )
            return deny(
                http_status_pb2.Forbidden,
                code_pb2.PERMISSION_DENIED,
                f"This needs the {required_role} role.",
                caller=(email, role),
            )
        return allow(email, role, reusable_for)
