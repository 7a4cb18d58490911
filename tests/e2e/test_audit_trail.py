"""The audit trail through the real gateway and every part: a thousand mixed
requests (creates, reads, searches, updates, deletes, billing reads, changes
refused, denials with a USER token and with none, good and bad logins), the
audit part restarted in the middle, and then exactly one entry for each
request, with the action, actor and status the client got; the chain
verifies; and no patient's name, email, address or birth date is anywhere in
the audit database or the gateway's audit log."""

import itertools
import json
import threading
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import started_system, supervisorctl
from tests.support import wait_for

pytestmark = pytest.mark.e2e

REQUESTS = 1000
ADMIN_EMAIL = "testuser@test.com"
CLERK = {"email": "audit-clerk@clinic.example", "password": "correct horse battery staple 9"}
# What a patient made here looks like: distinct words to look for in the trail.
PHI_MARKERS = ("Quillfeather", "patients-audit.example", "Auditville", "1971-03-")


@pytest.fixture(scope="module")
def audited_system(tmp_path_factory):
    yield from started_system(tmp_path_factory, "audit")


def patient_body(number):
    return {
        "name": f"Ada{number} Quillfeather",
        "email": f"ada{number}@patients-audit.example",
        "address": f"{number} Privet Drive, Auditville",
        "dateOfBirth": f"1971-03-{number % 28 + 1:02d}",
        "registeredDate": "2024-05-01",
    }


class Traffic:
    """Sends requests and keeps, for each, its request id and the entry it must have."""

    def __init__(self, system):
        self.url = system.url
        self.admin = system.session()
        system.token()  # a login of the harness's own, before the clerk exists
        created = self.admin.post(f"{self.url}/auth/users", json={**CLERK, "role": "USER"}, timeout=10)
        assert created.status_code == 201, created.text
        self.clerk = system.session(system.token(CLERK))
        self.anonymous = requests.Session()
        self.expected = {}  # request id -> (action, actor, status, patient id or None)
        self.patients = []
        self.numbers = itertools.count()

    def send(self, session, method, path, action, actor, patient_id=None, **kwargs):
        response = session.request(method, f"{self.url}{path}", timeout=15, **kwargs)
        request_id = response.headers["x-request-id"]
        self.expected[request_id] = (action, actor, response.status_code, patient_id)
        return response

    def create(self):
        response = self.send(
            self.admin, "POST", "/api/patients", "CREATE", ADMIN_EMAIL, json=patient_body(next(self.numbers))
        )
        assert response.status_code == 201, response.text
        patient_id = response.json()["id"]
        request_id = response.headers["x-request-id"]
        self.expected[request_id] = ("CREATE", ADMIN_EMAIL, 201, patient_id)
        self.patients.append(patient_id)

    def step(self, number):
        """One request of the mix (a create whenever no patient is left)."""
        if not self.patients:
            return self.create()
        patient_id = self.patients[number % len(self.patients)]
        kind = number % 12
        if kind == 0:
            self.create()
        elif kind in (1, 2):
            self.send(self.admin, "GET", f"/api/patients/{patient_id}", "READ", ADMIN_EMAIL, patient_id)
        elif kind == 3:
            self.send(self.clerk, "GET", "/api/patients?name=Quillfeather", "SEARCH", CLERK["email"])
        elif kind == 4:
            body = {**patient_body(number), "registeredDate": "2024-05-01"}
            response = self.send(
                self.admin, "PUT", f"/api/patients/{patient_id}", "UPDATE", ADMIN_EMAIL, patient_id, json=body
            )
            assert response.status_code == 200, response.text
        elif kind == 5:
            # Refused by the service (422): no change, and the attempt is in the trail.
            self.send(
                self.admin, "PUT", f"/api/patients/{patient_id}", "UPDATE", ADMIN_EMAIL, patient_id, json={}
            )
        elif kind == 6:
            self.send(
                self.clerk, "DELETE", f"/api/patients/{patient_id}", "DENIED", CLERK["email"], patient_id
            )
        elif kind == 7:
            self.send(self.anonymous, "GET", f"/api/patients/{patient_id}", "DENIED", None, patient_id)
        elif kind == 8:
            self.send(self.clerk, "GET", "/api/audit", "DENIED", CLERK["email"])
        elif kind == 9:
            self.send(
                self.admin,
                "GET",
                f"/api/billing/accounts/{patient_id}",
                "BILLING_READ",
                ADMIN_EMAIL,
                patient_id,
            )
        elif kind == 10:
            email = f"nobody{number}@clinic.example"
            self.send(
                self.anonymous,
                "POST",
                "/auth/login",
                "LOGIN_FAILED",
                email,
                json={"email": email, "password": "x" * 12},
            )
        elif number % 24 == 11:
            self.send(self.anonymous, "POST", "/auth/login", "LOGIN", CLERK["email"], json=CLERK)
        else:
            response = self.send(
                self.admin, "DELETE", f"/api/patients/{patient_id}", "DELETE", ADMIN_EMAIL, patient_id
            )
            assert response.status_code == 204, response.text
            self.patients.remove(patient_id)


def all_entries(session, url):
    """Every entry, by id (pages are read one after another while entries
    may still arrive, so one can show on two pages)."""
    entries, page = {}, 1
    while True:
        response = session.get(f"{url}/api/audit", params={"page": page, "page_size": 500}, timeout=30)
        assert response.status_code == 200, response.text
        entries.update((entry["id"], entry) for entry in response.json())
        if page >= json.loads(response.headers["X-Pagination"])["total_pages"]:
            return list(entries.values())
        page += 1


# A thousand requests, a restart, then the trail read back: minutes on a busy machine.
@pytest.mark.timeout(1200)
def test_a_thousand_requests_one_entry_each(audited_system):
    system = audited_system
    traffic = Traffic(system)
    # The audit service with its consumer and collector, which it forks.
    restart = threading.Thread(target=supervisorctl, args=(system, "restart", "audit"))
    for number in range(REQUESTS):
        if number == REQUESTS // 2:
            restart.start()  # requests go on while the audit part restarts
        traffic.step(number)
    restart.join(120)
    assert not restart.is_alive()
    assert len(traffic.expected) >= REQUESTS

    reader = system.session()

    def trail_complete():
        entries = all_entries(reader, system.url)
        found = {entry["requestId"] for entry in entries}
        return entries if set(traffic.expected) <= found else None

    entries = wait_for(trail_complete, timeout=120, interval=1, message="an entry for every request")
    by_request = {}
    for entry in entries:
        if entry["requestId"] is not None:
            by_request.setdefault(entry["requestId"], []).append(entry)
    for request_id, (action, actor, status, patient_id) in traffic.expected.items():
        found = by_request[request_id]
        assert len(found) == 1, found
        entry = found[0]
        assert (entry["action"], entry["actor"], entry["status"]) == (action, actor, status), entry
        if patient_id is not None:
            assert entry["patientId"] == patient_id, entry
    # Every kind of entry was made, and changes name their fields.
    actions = {action for action, *_ in traffic.expected.values()}
    assert actions == {
        "CREATE",
        "READ",
        "SEARCH",
        "UPDATE",
        "DELETE",
        "DENIED",
        "BILLING_READ",
        "LOGIN",
        "LOGIN_FAILED",
    }
    creates = [entry for entry in entries if entry["action"] == "CREATE" and entry["actor"] == ADMIN_EMAIL]
    assert creates and all({"name", "email", "address", "dateOfBirth"} <= set(e["fields"]) for e in creates)
    verdict = reader.get(f"{system.url}/api/audit/verify", timeout=60).json()
    assert verdict["ok"] is True and verdict["entries"] >= len(entries), verdict

    data = Path(system.env["PMS_DATA_DIR"])
    audit_files = [*data.glob("audit.db*"), *(data / "audit").iterdir()]
    assert any(path.name == "audit.db" for path in audit_files)
    for path in audit_files:
        content = path.read_bytes()
        for marker in PHI_MARKERS:
            assert marker.encode() not in content, f"{marker!r} in {path}"


def test_the_trail_is_admin_only_and_read_only(audited_system):
    system = audited_system
    admin = system.session()
    assert requests.get(f"{system.url}/api/audit", timeout=10).status_code == 401
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert admin.request(method, f"{system.url}/api/audit", json={}, timeout=10).status_code == 405
    response = admin.get(f"{system.url}/api/audit", params={"from": "not a time"}, timeout=10)
    assert response.status_code == 422 and "from" in response.text
    document = requests.get(f"{system.url}/api-docs/audit", timeout=10).json()
    assert document["info"]["title"] == "Audit API"
