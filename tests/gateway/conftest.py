import pytest

from tests.auth.conftest import make_app  # noqa: F401  (an auth app on a real database)


@pytest.fixture
def database_kind():
    """ext_authz keeps no data: one database kind behind auth is enough here."""
    return "sqlite"
