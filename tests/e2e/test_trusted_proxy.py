"""Behind one trusted proxy (the load balancer, GATEWAY_TRUSTED_HOPS=1) the
per-client login limit counts real clients: the address the proxy appended to
X-Forwarded-For, never one the client wrote there itself."""

import http.client
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stack.harness import RunningSystem
from tests.support import free_port

pytestmark = pytest.mark.e2e
PER_CLIENT_LIMIT = 3


class AppendingProxy(BaseHTTPRequestHandler):
    """A load balancer's one job here: forward, appending the peer's address."""

    upstream_port = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        forwarded = self.headers.get("X-Forwarded-For")
        peer = self.client_address[0]
        headers = {
            "Content-Type": self.headers.get("Content-Type", "application/json"),
            "X-Forwarded-For": f"{forwarded}, {peer}" if forwarded else peer,
        }
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=10)
        try:
            upstream.request("POST", self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def proxied_system(tmp_path_factory):
    system = RunningSystem(
        tmp_path_factory.mktemp("proxied"),
        {
            "GATEWAY_TRUSTED_HOPS": "1",
            "LOGIN_MAX_FAILURES_PER_CLIENT": str(PER_CLIENT_LIMIT),
            "LOGIN_MAX_FAILURES": "100",
            "LOGIN_WINDOW_SECONDS": "60",
        },
    ).start()
    handler = type("Proxy", (AppendingProxy,), {"upstream_port": system.ports["GATEWAY_PORT"]})
    proxy = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield system, proxy.server_address[1]
    proxy.shutdown()
    system.stop()


def login(proxy_port, client_address, email, password, forwarded_for=None):
    """A login from `client_address` (a loopback address of its own) through the proxy."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", proxy_port, timeout=10, source_address=(client_address, 0)
    )
    headers = {"Content-Type": "application/json"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    try:
        connection.request(
            "POST", "/auth/login", body=json.dumps({"email": email, "password": password}), headers=headers
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_login_limit_counts_the_client_behind_the_proxy(proxied_system):
    _, proxy_port = proxied_system
    attacker, colleague = "127.0.0.2", "127.0.0.3"
    failures = [
        login(proxy_port, attacker, f"nobody-{uuid.uuid4().hex[:6]}@example.com", "wrong-password")
        for _ in range(PER_CLIENT_LIMIT)
    ]
    assert failures == [401] * PER_CLIENT_LIMIT
    assert login(proxy_port, attacker, "testuser@test.com", "password123") == 429
    # Writing another address into X-Forwarded-For does not make the attacker someone else.
    assert login(proxy_port, attacker, "testuser@test.com", "password123", forwarded_for="203.0.113.9") == 429
    # Everyone else behind the same proxy still logs in.
    assert login(proxy_port, colleague, "testuser@test.com", "password123") == 200
