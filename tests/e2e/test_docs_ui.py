"""/docs as a person uses it: a real browser opens Swagger UI, authorizes with
a token from login and runs a patient call through the gateway."""

import re

import pytest
import requests
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


def test_every_service_publishes_its_openapi_at_the_gateway(system):
    for name in ("patients", "auth", "analytics", "billing", "audit"):
        response = requests.get(f"{system.url}/api-docs/{name}", timeout=10)
        assert response.status_code == 200, name
        spec = response.json()
        assert spec["openapi"].startswith("3.") and spec["paths"], name


def test_swagger_ui_authorizes_and_lists_patients(system, browser_page, tmp_path):
    token = system.token()
    page = browser_page
    page.goto(f"{system.url}/docs/", wait_until="networkidle")
    expect(page.locator(".topbar select")).to_contain_text("patients")
    expect(page.locator(".info .title")).to_contain_text("Patient Service")

    page.get_by_role("button", name=re.compile("Authorize")).first.click()
    page.locator(".modal-ux input[type=text]").fill(token)
    page.locator(".modal-ux").get_by_role("button", name="Authorize", exact=True).click()
    page.locator(".modal-ux").get_by_role("button", name="Close").click()

    operation = page.locator(".opblock-get").filter(has_text=re.compile(r"/patients\s*List patients"))
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text(re.compile(r"^\s*200"), timeout=15000)
    expect(operation.locator(".live-responses-table")).to_contain_text("John Doe")
    # The call went to the gateway with the token the page was given.
    expect(operation.locator(".curl")).to_contain_text(f"Bearer {token}")
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
