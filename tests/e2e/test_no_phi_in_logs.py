"""No patient's name, email, address or birth date, and no token, reaches any
part's log: after creates, searches (whose query strings carry names and
emails) and writes that fail in the database, every log line of every part is
searched for them. On PostgreSQL when CI gives one (its error messages quote
the values of a failed row), else on SQLite."""

import uuid
from pathlib import Path

import pytest

from stack.harness import RunningSystem
from tests.support import fresh_database, postgres_admin_url

pytestmark = pytest.mark.e2e


def patient(tag, **changes):
    return {
        "name": f"Zelda Quixote {tag}",
        "email": f"zq.{tag}@example.org",
        "address": f"77 Marrow Lane {tag}",
        "dateOfBirth": "1931-07-19",
        "registeredDate": "2024-02-02",
        **changes,
    }


@pytest.fixture
def system_on_the_ci_database(tmp_path):
    kind = "postgres" if postgres_admin_url() else "sqlite"
    with fresh_database(kind, tmp_path, "phi") as url:
        settings = {"DATABASE_URL": url.replace("+psycopg", "")} if kind == "postgres" else {}
        system = RunningSystem(tmp_path, settings).start()
        try:
            yield system
        finally:
            system.stop()


def test_no_phi_and_no_token_in_any_log(system_on_the_ci_database):
    system = system_on_the_ci_database
    tag = uuid.uuid4().hex[:10]
    token = system.token()
    api = system.session(token)
    url = f"{system.url}/api/patients"
    first, second = patient(tag), patient(tag + "b")
    created = [api.post(url, json=body, timeout=10) for body in (first, second)]
    assert [response.status_code for response in created] == [201, 201]

    searches = [
        {"name": "Zelda Quixote"},
        {"email": first["email"]},
        {"access_token": token},
        {"name": first["address"]},
    ]
    for query in searches:
        assert api.get(url, params=query, timeout=10).status_code == 200
    failures = {
        "duplicate email": api.post(url, json=patient(tag + "c", email=first["email"]), timeout=10),
        "look-alike duplicate email": api.post(
            url, json=patient(tag + "d", email=first["email"].upper()), timeout=10
        ),
        "update to a taken email": api.put(
            f"{url}/{created[1].json()['id']}", json={**second, "email": first["email"]}, timeout=10
        ),
        "NUL byte": api.post(url, json=patient(tag + "e", name="Zelda\u0000Quixote"), timeout=10),
        "bad date": api.post(url, json=patient(tag + "f", dateOfBirth="1931-13-45"), timeout=10),
    }
    statuses = {name: response.status_code for name, response in failures.items()}
    assert all(400 <= status < 500 for status in statuses.values()), statuses
    system.stop()

    secrets = [
        token,
        first["name"],
        second["name"],
        first["email"],
        second["email"],
        first["address"],
        second["address"],
        "Zelda",
        "Quixote",
        "Marrow Lane",
        "1931-07-19",
        f"zq.{tag}",
    ]
    logs = {"launcher output": "\n".join(system.output)}
    for path in Path(system.env["PMS_RUN_DIR"]).rglob("*.log"):
        logs[str(path)] = path.read_text(errors="replace")
    assert len(logs) > 1 and sum(len(text) for text in logs.values()) > 1000
    leaks = [
        (where, secret)
        for where, text in logs.items()
        for secret in secrets
        if secret.lower() in text.lower()
    ]
    assert leaks == []
