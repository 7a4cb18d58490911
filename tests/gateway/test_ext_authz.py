"""ext_authz on a real gRPC channel, asking a real auth service over HTTP."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from werkzeug.serving import make_server

from gateway.ext_authz import auth_probe, create_server
from gateway.ext_authz.config import Config
from gateway.ext_authz.service import ROUTE_METADATA
from tests.auth.helpers import bearer, create_user, token_for
from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


class AuthServer:
    """The auth app on a real HTTP port, stoppable and restartable."""

    def __init__(self, app):
        self.app, self.port, self.server = app, free_port(), None

    def start(self):
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class ExtAuthz:
    """The aio server on its own event loop thread, as `python -m gateway.ext_authz` runs it."""

    def __init__(self, config, probe_interval=0.5):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.frame, _ = self.run(create_server(config, "127.0.0.1:0"))
        self.run(self.frame.start())
        self.probes = []
        self.run(self._follow(auth_probe(config), probe_interval))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.frame.port}")

    async def _follow(self, probe, interval):
        def counted():
            self.probes.append(time.monotonic())
            return probe()

        self.frame.follow(counted, interval=interval)

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def check(self, authorization=None, required_role="USER"):
        headers = {"x-request-id": "test"}
        if authorization is not None:
            headers["authorization"] = authorization
        request = external_auth_pb2.CheckRequest()
        request.attributes.request.http.headers.update(headers)
        request.attributes.request.http.path = "/api/patients"
        if required_role is not None:  # as the route's metadata names it
            request.attributes.route_metadata_context.filter_metadata[ROUTE_METADATA].update(
                {"required_role": required_role}
            )
        return external_auth_pb2_grpc.AuthorizationStub(self.channel).Check(request, timeout=5)

    def serving(self):
        response = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def close(self):
        self.loop.call_soon_threadsafe(self.frame.watcher.cancel)
        self.channel.close()
        self.run(self.frame.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def auth(make_app):
    server = AuthServer(make_app()).start()
    yield server
    server.stop()


@pytest.fixture
def authz(auth):
    running = ExtAuthz(Config(AUTH_URL=f"http://127.0.0.1:{auth.port}", CACHE_SECONDS=0.5))
    yield running
    running.close()


def headers_of(response):
    return {option.header.key: option.header.value for option in response.ok_response.headers}


def test_a_valid_admin_token_is_allowed_with_identity_headers(auth, authz):
    token = token_for(auth.app.test_client())
    response = authz.check(f"Bearer {token}", required_role="ADMIN")
    assert response.status.code == code_pb2.OK
    assert headers_of(response) == {"x-user-email": "testuser@test.com", "x-user-role": "ADMIN"}


@pytest.mark.parametrize("authorization", [None, "", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt"])
def test_missing_or_bad_tokens_are_denied_with_401(authz, authorization):
    response = authz.check(authorization)
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401


def test_a_user_token_on_an_admin_route_is_403(auth, authz):
    client = auth.app.test_client()
    admin = token_for(client)
    assert (
        create_user(client, "reader@example.com", **bearer(admin), **{"X-User-Role": "ADMIN"}).status_code
        == 201
    )
    user = token_for(client, "reader@example.com", "Correct-horse-42")
    assert authz.check(f"Bearer {user}", required_role="USER").status.code == code_pb2.OK
    denied = authz.check(f"Bearer {user}", required_role="ADMIN")
    assert denied.status.code == code_pb2.PERMISSION_DENIED and denied.denied_response.status.code == 403


def test_a_route_that_names_no_role_needs_the_strictest(auth, authz):
    client = auth.app.test_client()
    admin = token_for(client)
    assert (
        create_user(client, "plain@example.com", **bearer(admin), **{"X-User-Role": "ADMIN"}).status_code
        == 201
    )
    user = token_for(client, "plain@example.com", "Correct-horse-42")
    assert authz.check(f"Bearer {user}", required_role=None).denied_response.status.code == 403
    assert authz.check(f"Bearer {admin}", required_role=None).status.code == code_pb2.OK


def test_a_yes_tells_the_gateway_who_and_for_how_long_it_may_reuse_it(auth, authz):
    token = token_for(auth.app.test_client())
    granted = []
    for _ in range(2):  # asked auth, then answered from its cache
        grant = authz.check(f"Bearer {token}").dynamic_metadata
        assert grant["user"] == "testuser@test.com" and grant["role"] == "ADMIN"
        granted.append(grant["reusable_for_ms"])
    # At most CACHE_SECONDS (0.5); the cached answer offers only what is left of it.
    assert 0 < granted[1] <= granted[0] <= 500


def test_a_revoked_token_is_refused_once_the_cache_bound_passes(auth, authz):
    client = auth.app.test_client()
    token = token_for(client)
    assert authz.check(f"Bearer {token}").status.code == code_pb2.OK
    assert client.post("/logout", headers=bearer(token)).status_code == 204
    revoked_at = time.monotonic()
    wait_for(
        lambda: authz.check(f"Bearer {token}").status.code == code_pb2.UNAUTHENTICATED,
        timeout=5,
        message="the revoked token to be refused",
    )
    assert time.monotonic() - revoked_at <= 1.5  # CACHE_SECONDS=0.5


def test_auth_down_fails_closed_and_health_follows(auth, authz):
    token = token_for(auth.app.test_client())
    wait_for(authz.serving, timeout=10, message="SERVING while auth is up")
    auth.stop()
    time.sleep(0.6)  # past the cache bound
    response = authz.check(f"Bearer {token}")
    assert response.status.code == code_pb2.UNAVAILABLE and response.denied_response.status.code == 503
    wait_for(lambda: not authz.serving(), timeout=10, message="NOT_SERVING while auth is down")
    auth.start()
    wait_for(authz.serving, timeout=10, message="SERVING again")
    assert authz.check(f"Bearer {token}").status.code == code_pb2.OK


def test_it_serves_within_a_quarter_second_of_auth_answering_not_at_its_next_interval(make_app):
    auth = AuthServer(make_app())  # not started yet, as when `make run` starts both
    authz = ExtAuthz(Config(AUTH_URL=f"http://127.0.0.1:{auth.port}"), probe_interval=30.0)
    try:
        wait_for(lambda: len(authz.probes) >= 3, timeout=5, message="probes while auth is away")
        assert not authz.serving()
        auth.start()
        answering_at = time.monotonic()
        wait_for(authz.serving, timeout=5, message="SERVING once auth answers")
        assert time.monotonic() - answering_at < 1.0  # not the 30 s interval
        probes_when_ready = len(authz.probes)
        time.sleep(1.0)
        assert len(authz.probes) == probes_when_ready  # ready: the next probe is 30 s away
    finally:
        authz.close()
        if auth.server is not None:
            auth.stop()


def test_a_request_that_does_not_parse_is_invalid_argument(authz):
    check = authz.channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")  # raw bytes, unparsed
    with pytest.raises(grpc.RpcError) as refused:
        check(b"\xff\xff\xff not a CheckRequest", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@contextmanager
def ext_authz_process(env):
    """`python -m gateway.ext_authz`, killed at the end if it is still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.ext_authz"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_main_serves_once_auth_answers_and_drains_on_sigterm(auth, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "EXT_AUTHZ_PORT": str(port),
        "AUTH_HOST": "127.0.0.1",
        "AUTH_PORT": str(auth.port),
        "PMS_DATA_DIR": str(tmp_path),
    }
    request = health_pb2.HealthCheckRequest()
    with ext_authz_process(env) as process, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving():
            try:
                return health.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:  # not listening yet
                return False

        wait_for(serving, timeout=30, message="ext_authz SERVING")
        watch = health.Watch(request, timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    messages = [json.loads(line)["message"] for line in stdout.splitlines()]
    assert "signal received: draining" in messages and messages[-1] == "stopped"
