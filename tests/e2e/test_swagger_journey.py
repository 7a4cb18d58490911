"""A new user's first session in Swagger UI at /docs, in a real browser,
through the gateway, with nothing but the page: the dev login read from the
docs' own instructions, a login run in the auth document, its token pasted
into Authorize, a patient registered from the example body and updated from
the update's example body, and the month's registrations read in the
analytics document. Each call succeeds, as the page shows it."""

import json
import re

import pytest
from playwright.sync_api import expect

from stack.harness import wait_for

pytestmark = pytest.mark.e2e
# How long the page may take to render a document or show an answer: the
# machine running the suite is often busy, and a first call may meet a cold worker.
UI_TIMEOUT_MS = 20_000


def switch_document(page, name, title):
    page.locator(".topbar select").select_option(label=name)
    expect(page.locator(".info .title")).to_contain_text(title, timeout=UI_TIMEOUT_MS)


def open_operation(page, method, path, summary):
    """Expands an operation and presses "Try it out"."""
    operation = page.locator(f".opblock-{method}").filter(
        has_text=re.compile(rf"{re.escape(path)}\s*{re.escape(summary)}")
    )
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    return operation


def execute(operation, expected_status):
    """Presses Execute; returns the response body the page shows, once its
    status is the one expected."""
    operation.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text(re.compile(rf"^\s*{expected_status}\b"), timeout=UI_TIMEOUT_MS)
    body = operation.locator(".live-responses-table tbody .response-col_description pre").first
    return json.loads(body.inner_text())


def authorize(page, token):
    page.get_by_role("button", name=re.compile("Authorize")).first.click()
    modal = page.locator(".modal-ux")
    modal.locator("input[type=text]").fill(token)
    modal.get_by_role("button", name="Authorize", exact=True).click()
    # The modal shows the scheme as authorized (its Logout button) before it is closed.
    expect(modal.get_by_role("button", name="Logout")).to_be_visible(timeout=UI_TIMEOUT_MS)
    modal.get_by_role("button", name="Close").click()


def run_journey(page, base_url):
    page.goto(f"{base_url}/docs/", wait_until="networkidle")
    expect(page.locator(".info .title")).to_contain_text("Patient Service", timeout=UI_TIMEOUT_MS)

    # 1. The docs say how to get a token and, in dev, with which login.
    instructions = page.locator(".info .description").inner_text()
    login = re.search(r"log in as (\S+@\S+) / (\S+) \(ADMIN\)", instructions)
    assert login, instructions
    email, password = login.groups()

    # 2. Log in from the auth document's own operation.
    switch_document(page, "auth", "Auth Service")
    operation = open_operation(page, "post", "/login", "Log in")
    operation.locator("textarea.body-param__text").fill(json.dumps({"email": email, "password": password}))
    token = execute(operation, 200)["token"]
    assert token.count(".") == 2  # a JWT

    # 3. Authorize with it, then register a patient from the example body as it stands.
    switch_document(page, "patients", "Patient Service")
    authorize(page, token)
    operation = open_operation(page, "post", "/patients", "Register a patient")
    example = json.loads(operation.locator("textarea.body-param__text").input_value())
    created = execute(operation, 201)
    assert {key: created[key] for key in example} == example
    assert created["id"] and created["billingStatus"] in ("ACTIVE", "PENDING")

    # 4. Update it from the update's example body (the example patient moves house).
    operation = open_operation(page, "put", "/patients/{patient_id}", "Update a patient")
    operation.locator("tr[data-param-name='patient_id'] input").fill(created["id"])
    change = json.loads(operation.locator("textarea.body-param__text").input_value())
    assert change["address"] != created["address"]
    updated = execute(operation, 200)
    assert updated["id"] == created["id"] and updated["address"] == change["address"]

    # 5. Read the registrations of the new patient's month; analytics counts
    # from the patient events, so the month shows once the event is counted.
    switch_document(page, "analytics", "Analytics")
    operation = open_operation(page, "get", "/analytics/registrations", "Registrations per month")
    month = created["registeredDate"][:7]
    operation.locator("tr[data-param-name='from'] input").fill(month)
    operation.locator("tr[data-param-name='to'] input").fill(month)

    def counted():
        months = execute(operation, 200)
        return [row["count"] for row in months if row["month"] == month] or None

    counts = wait_for(counted, timeout=60, interval=1, message=f"registrations for {month} in Swagger UI")
    assert counts[0] >= 1
    return created


def test_a_new_user_logs_in_authorizes_creates_updates_and_reads_figures_in_swagger_ui(
    system, browser_page, tmp_path
):
    page = browser_page
    try:
        created = run_journey(page, system.url)
    finally:
        page.screenshot(path=str(tmp_path / "journey.png"), full_page=True)
    # What the page did is what the API holds.
    stored = system.session().get(f"{system.url}/api/patients/{created['id']}", timeout=10)
    assert stored.status_code == 200 and stored.json()["address"] != created["address"]
