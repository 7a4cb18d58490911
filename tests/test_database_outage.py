"""Every HTTP service answers a lost database with 503, not 500."""
import importlib

import pytest


@pytest.mark.parametrize("service", ["patient", "auth", "analytics"])
def test_an_unreachable_database_is_a_503_in_the_error_shape(service):
    """The shared handler every HTTP service installs (pms_common.web)."""
    module = importlib.import_module(service)
    config = importlib.import_module(f"{service}.config").Config(
        DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/nowhere", JWT_SECRET="k" * 40)
    client = module.create_app(config).test_client()
    path = {"patient": "/patients", "auth": "/users", "analytics": "/analytics/summary"}[service]
    response = client.get(path)
    assert response.status_code == 503
    assert response.get_json()["code"] == 503 and "database" in response.get_json()["message"]
