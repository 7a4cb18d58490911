"""Helpers the tests share: free ports, waiting, real databases, a real
broker, and callers with the identity the gateway would have set."""

import collections
import os
import socket
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
import sqlalchemy as sa
from flask.testing import FlaskClient

from pms_common.identity import ROLE_HEADER, USER_HEADER
from stack.harness import free_port, wait_for
from stack.parts import envoy_command

POSTGRES_URL_VAR = "PMS_TEST_POSTGRES_URL"
TEST_CALLER = "tester@example.com"


def start_envoy(config, log_file, stdout=subprocess.DEVNULL, text=False):
    """Real Envoy on a rendered config (stack.parts.envoy_command), its errors in `log_file`."""
    with open(log_file, "w") as log:
        return subprocess.Popen(envoy_command(config, "error"), stdout=stdout, stderr=log, text=text)


def wait_for_envoy(process, answers, log_file, message="envoy to be ready"):
    """Waits until answers() is truthy; fails at once, with Envoy's log, if
    Envoy exits first (a port taken since it was picked, say)."""
    wait_for(lambda: process.poll() is not None or answers(), timeout=30, message=message)
    assert process.poll() is None, (
        f"envoy exited ({process.returncode}): {Path(log_file).read_text()[-2000:]}"
    )


@contextmanager
def running_gateway(config_file, environ):
    """Real Envoy on gateway/envoy.yaml rendered for `environ` (which names its
    ENVOY_ADMIN_PORT) into `config_file`, once it is ready; killed at the end."""
    import requests

    from gateway.render import render

    config = render(config_file, environ)
    log_file = Path(config).parent / "envoy.log"
    process = start_envoy(config, log_file)
    ready = f"http://127.0.0.1:{environ['ENVOY_ADMIN_PORT']}/ready"
    try:
        wait_for_envoy(process, lambda: requests.get(ready, timeout=1).ok, log_file)
        yield process
    finally:
        process.kill()
        process.wait()


def voluntary_switches(pid, thread_id=None):
    """How often a thread (by default the process's main one) has gone to
    sleep so far: its voluntary context switches, which count its wake-ups
    (a busy host's preemptions are the other, involuntary, kind)."""
    status = Path(f"/proc/{pid}/task/{thread_id or pid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def identity_headers(role, email=TEST_CALLER):
    """The headers the gateway sets for a signed-in caller with this role."""
    return {USER_HEADER: email, ROLE_HEADER: role}


def client_class_as(role, email=TEST_CALLER):
    """A Flask test client class whose every request carries this identity;
    a test may still override or drop a header per request."""

    class IdentifiedClient(FlaskClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.environ_base.update(
                {
                    "HTTP_" + name.upper().replace("-", "_"): value
                    for name, value in identity_headers(role, email).items()
                }
            )

    return IdentifiedClient


def client_as(app, role=None, email=TEST_CALLER):
    """A test client calling as `role`, or with no identity at all (None)."""
    client_class = FlaskClient if role is None else client_class_as(role, email)
    return client_class(app, app.response_class, use_cookies=True)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class CallerIdentity(grpc.UnaryUnaryClientInterceptor):
    """Adds x-user-email and x-user-role to every call: role_for(method) picks
    the role (None sends no identity)."""

    def __init__(self, role_for, email=TEST_CALLER):
        self.role_for, self.email = role_for, email

    def intercept_unary_unary(self, continuation, details, request):
        role = self.role_for(details.method)
        metadata = list(details.metadata or ())
        if role is not None:
            metadata += [(USER_HEADER.lower(), self.email), (ROLE_HEADER.lower(), role)]
        return continuation(
            _CallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                details.compression,
            ),
            request,
        )


def channel_as(channel, role_for, email=TEST_CALLER):
    """The channel, with every unary call carrying the identity role_for(method) names."""
    return grpc.intercept_channel(channel, CallerIdentity(role_for, email))


def postgres_admin_url():
    return os.environ.get(POSTGRES_URL_VAR)


@contextmanager
def migrated_apps(create_app, migrations_dir, db, role=None):
    """Yields build(config, seed=None) -> a Flask app on its migrated database
    (whose test_client() calls as `role`, when given); afterwards closes every
    app's engine, so a test database can be dropped."""
    from pms_common.serve import migrate_and_seed

    apps = []

    def build(config, seed=None):
        app = create_app(config)
        if role is not None:
            app.test_client_class = client_class_as(role)
        migrate_and_seed(app, migrations_dir, seed)
        apps.append(app)
        return app

    try:
        yield build
    finally:
        for app in apps:
            with app.app_context():
                db.engine.dispose()


@contextmanager
def fresh_database(kind, tmp_path, name):
    """A new, empty database: a SQLite file, or a PostgreSQL database created
    on the server named by PMS_TEST_POSTGRES_URL and dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / (name + '.db')}"
        return
    admin_url = postgres_admin_url()
    db_name = f"pms_test_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{db_name}".replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


class Broker:
    """A real Kafka-protocol broker (Tansu, memory storage) on a free port,
    that a test can stop and start again on the same port."""

    def __init__(self):
        from stack.parts import tansu_command

        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._command = tansu_command(self.port)
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, timeout=20, message=f"broker on {self.bootstrap}")
        return self

    def _answers(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def prepared_lookups(connection, *tables):
    """{statement: (generic plans, custom plans)} of this session's prepared
    statements that look up an IN list in one of the tables (PostgreSQL)."""
    rows = connection.execute(
        sa.text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
    )
    return {
        statement: (generic, custom)
        for statement, generic, custom in rows
        if " IN (" in statement and any(f"FROM {table}" in statement for table in tables)
    }
