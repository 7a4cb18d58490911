"""Fixtures every test may use: a real database of each kind, a real broker."""

import pytest

from tests.support import Broker, fresh_database, postgres_admin_url

DATABASE_KINDS = ["sqlite", "postgres"]


def pytest_collection_modifyitems(config, items):
    # End-to-end tests start the whole system; run them last so a unit failure shows first.
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.fixture(params=DATABASE_KINDS)
def database_kind(request):
    if request.param == "postgres" and not postgres_admin_url():
        pytest.skip("PostgreSQL tests run when PMS_TEST_POSTGRES_URL is set (CI sets it)")
    return request.param


@pytest.fixture
def database_url(database_kind, tmp_path, request):
    """An empty database for one test, SQLite and (when configured) PostgreSQL."""
    service = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    with fresh_database(database_kind, tmp_path, service) as url:
        yield url


@pytest.fixture(scope="session")
def broker():
    """One real broker for the session; tests use their own topics or groups."""
    running = Broker().start()
    yield running
    running.stop()


@pytest.fixture
def own_broker():
    """A broker for one test that it may stop and restart."""
    running = Broker().start()
    yield running
    running.stop()
