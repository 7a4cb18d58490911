"""Every HTTP service answers a lost database with 503, not 500."""

import importlib
import secrets

import pytest

from pms_common.identity import ADMIN
from tests.support import client_as


@pytest.mark.parametrize("service", ["patient", "auth", "analytics"])
def test_an_unreachable_database_is_a_503_in_the_error_shape(service):
    """The shared handler every HTTP service installs (pms_common.web)."""
    module = importlib.import_module(service)
    config = importlib.import_module(f"{service}.config").Config(
        DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/nowhere", JWT_SECRET=secrets.token_urlsafe(48)
    )
    client = client_as(module.create_app(config), ADMIN)
    path = {"patient": "/patients", "auth": "/users", "analytics": "/analytics/summary"}[service]
    response = client.get(path)
    assert response.status_code == 503
    assert response.get_json()["code"] == 503 and "database" in response.get_json()["message"]
