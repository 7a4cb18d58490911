"""Pooled PostgreSQL connections that the server dropped (a restart, an idle
timeout): an idle one is checked and replaced before use; a busy pool pays
no check, and one dropped mid-use costs one failed request, not the pool."""

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from pms_common import db
from pms_common.db import engine_options
from tests.support import fresh_database, postgres_admin_url

pytestmark = pytest.mark.skipif(
    not postgres_admin_url(), reason="PostgreSQL tests run when PMS_TEST_POSTGRES_URL is set (CI sets it)"
)


@pytest.fixture
def engine(tmp_path):
    with fresh_database("postgres", tmp_path, "connections") as url:
        engine = sa.create_engine(url, **engine_options(url))
        yield engine
        engine.dispose()


def backend_pid(engine):
    with engine.connect() as connection:
        return connection.scalar(sa.text("SELECT pg_backend_pid()"))


def terminate(pid):
    with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(engine, monkeypatch):
    first = backend_pid(engine)
    terminate(first)
    monkeypatch.setattr(db, "IDLE_CHECK_SECONDS", 0.0)  # every pooled connection counts as idle
    second = backend_pid(engine)  # no error: the check found it dead and the pool reconnected
    assert second != first


def test_a_busy_pool_is_not_checked_and_recovers_after_one_failure(engine, monkeypatch):
    monkeypatch.setattr(db, "IDLE_CHECK_SECONDS", 3600.0)
    first = backend_pid(engine)
    terminate(first)
    with pytest.raises(OperationalError):  # the one request that met the dropped connection
        backend_pid(engine)
    assert backend_pid(engine) != first  # the pool was replaced, not left broken
