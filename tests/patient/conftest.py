"""A patient app on a real database, with a real billing server (or none)."""

import pytest

from billing import create_server as create_billing_server
from billing import set_ready
from billing.config import Config as BillingConfig
from billing.store import Store
from patient import MIGRATIONS_DIR, create_app
from patient.config import Config
from patient.extensions import db
from pms_common.identity import ADMIN
from tests.support import free_port, migrated_apps

VALID = {
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "address": "12 St James's Sq, London",
    "dateOfBirth": "1985-12-10",
    "registeredDate": "2024-05-01",
}


class BillingServer:
    """A real billing gRPC server that a test can stop and start again on one port."""

    def __init__(self, database_url):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.store = Store(database_url)
        self.store.migrate()
        self.server = None

    def start(self):
        self.server, _, health = create_billing_server(
            BillingConfig(EVENTS_ENABLED=False), self.address, store=self.store
        )
        self.server.start()
        set_ready(health, self.store)
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None


@pytest.fixture
def billing(tmp_path):
    server = BillingServer(f"sqlite:///{tmp_path / 'billing.db'}").start()
    yield server
    server.stop()
    server.store.dispose()


@pytest.fixture
def make_app(database_url, billing):
    """Builds a migrated patient app whose test clients call as an ADMIN;
    keyword arguments override its Config."""
    with migrated_apps(create_app, MIGRATIONS_DIR, db, role=ADMIN) as build:

        def factory(**overrides):
            settings = {
                "DATABASE_URL": database_url,
                "BILLING_ADDRESS": billing.address,
                "BILLING_TIMEOUT_SECONDS": 2.0,
                **overrides,
            }
            return build(Config(**settings))

        yield factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def create(client):
    """POSTs a valid patient with the given fields changed; returns the response."""
    counter = iter(range(1, 10_000))

    def post(**changes):
        body = {**VALID, "email": f"patient{next(counter)}@example.com", **changes}
        return client.post("/patients", json=body)

    return post
