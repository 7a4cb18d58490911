"""Helpers the tests share: free ports, waiting, real databases and a real broker."""
import os
import socket
import subprocess
import uuid
from contextlib import contextmanager

import psycopg

from stack.running import free_port, wait_for  # noqa: F401  (re-exported for tests)

POSTGRES_URL_VAR = "PMS_TEST_POSTGRES_URL"


def postgres_admin_url():
    return os.environ.get(POSTGRES_URL_VAR)


@contextmanager
def migrated_apps(create_app, migrations_dir, db):
    """Yields build(config, seed=None) -> a Flask app on its migrated database;
    afterwards closes every app's engine, so a test database can be dropped."""
    from pms_common.serve import migrate_and_seed

    apps = []

    def build(config, seed=None):
        app = create_app(config)
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
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
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
