"""A real billing server on port 0 over a migrated database, and a way to
make a call slow for real (another transaction holds the patient's row)."""

import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace

import grpc
import pytest
import sqlalchemy as sa

from billing import Config, create_server, set_ready
from billing.store import ACTIVE, Store, accounts
from pms_common.config import normalize_database_url
from pms_common.identity import SERVICE, USER
from pms_common.protos import billing_service_pb2 as pb
from pms_common.protos import billing_service_pb2_grpc
from tests.support import channel_as


@pytest.fixture
def store(database_url):
    migrated = Store(database_url)
    migrated.migrate()
    yield migrated
    migrated.dispose()


def rightful_role(method):
    """The role each RPC's real caller has: a user reads an account (through
    the gateway), the patient service opens and closes them."""
    return USER if method.endswith("/GetBillingAccount") else SERVICE


@contextmanager
def serving(store, database_url):
    config = Config(DATABASE_URL=database_url, EVENTS_ENABLED=False)
    server, port, health = create_server(config, "127.0.0.1:0", store=store)
    server.start()
    set_ready(health, store)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield SimpleNamespace(
            server=server,
            port=port,
            health=health,
            channel=channel,
            stub=billing_service_pb2_grpc.BillingServiceStub(channel_as(channel, rightful_role)),
        )
    finally:
        channel.close()
        server.stop(None)


@pytest.fixture
def billing(store, database_url):
    with serving(store, database_url) as running:
        yield running


def new_patient_request(patient_id=None, name="Ada Lovelace", email="ada@example.com"):
    return pb.BillingRequest(patientId=str(patient_id or uuid.uuid4()), name=name, email=email)


def account_count(store, patient_id=None):
    query = sa.select(sa.func.count()).select_from(accounts)
    if patient_id is not None:
        query = query.where(accounts.c.patient_id == uuid.UUID(str(patient_id)))
    with store.engine.connect() as connection:
        return connection.scalar(query)


@contextmanager
def row_held(database_url, patient_id):
    """An open transaction that inserted this patient's row: a create for the
    patient waits for it (on SQLite: any write waits). Rolled back on exit."""
    engine = sa.create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(
                accounts.insert().values(
                    account_id="ACC-HELD",
                    patient_id=uuid.UUID(str(patient_id)),
                    name="held",
                    email="held@example.com",
                    status=ACTIVE,
                    created_at=datetime.now(UTC),
                )
            )
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        engine.dispose()
