"""Two creates racing for one email: the unique index lets exactly one win."""

from concurrent.futures import ThreadPoolExecutor

from tests.patient.conftest import VALID


def test_concurrent_creates_with_the_same_email_make_one_patient(app):
    def attempt(index):
        with app.test_client() as client:
            return client.post(
                "/patients", json={**VALID, "name": f"Racer {index}", "email": "race@example.com"}
            ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(attempt, range(16)))
    assert sorted(statuses) == [201] + [409] * 15
    with app.test_client() as client:
        assert len(client.get("/patients", query_string={"email": "race@example.com"}).get_json()) == 1
