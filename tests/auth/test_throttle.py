"""Failed logins per account and per client: 429 with Retry-After, then recovery."""

import time

from tests.auth.helpers import DEV_USER_EMAIL, DEV_USER_PASSWORD, create_user, login


def from_client(address):
    return {"X-Envoy-External-Address": address}


def test_an_account_is_locked_after_max_failures_even_for_the_right_password(client):
    # Each attempt from another client: only the account's count can lock.
    for attempt in range(5):
        assert login(client, password="wrong", **from_client(f"10.0.0.{attempt}")).status_code == 401

    response = login(client, **from_client("10.0.1.1"))

    assert response.status_code == 429
    assert 290 <= int(response.headers["Retry-After"]) <= 300
    assert response.get_json()["code"] == 429
    # Another account is not affected.
    create_user(client, "other@test.com")
    assert login(client, "other@test.com", "Correct-horse-42", **from_client("10.0.1.1")).status_code == 200


def test_look_alike_spellings_of_an_email_count_against_one_account(client):
    spellings = [
        "TestUser@test.com",
        "TESTUSER@TEST.COM",
        "\uff54\uff45\uff53\uff54user@test.com",
        "testuser@\uff54\uff45\uff53\uff54.com",
        "testuser@test.com",
    ]
    for attempt, email in enumerate(spellings):
        assert login(client, email, "wrong", **from_client(f"10.0.0.{attempt}")).status_code == 401

    assert login(client, **from_client("10.0.1.1")).status_code == 429


def test_a_client_is_locked_after_its_own_higher_limit_across_accounts(client):
    """A shared clinic address tolerates more failures than one account does."""
    for attempt in range(20):
        assert (
            login(client, f"guess{attempt}@test.com", "wrong", **from_client("203.0.113.7")).status_code
            == 401
        )

    assert login(client, **from_client("203.0.113.7")).status_code == 429
    assert login(client, **from_client("203.0.113.8")).status_code == 200


def test_unknown_accounts_are_throttled_like_known_ones(client):
    for _ in range(5):
        login(client, "nobody@test.com", "wrong", **from_client("10.0.0.1"))
    # Locking reveals nothing: an unknown email locks just as a known one does.
    assert login(client, "nobody@test.com", "wrong", **from_client("10.0.0.2")).status_code == 429


def test_the_client_is_the_last_forwarded_address_without_the_envoy_header(client):
    for attempt in range(20):
        login(
            client,
            f"guess{attempt}@test.com",
            "wrong",
            **{"X-Forwarded-For": f"198.51.100.{attempt}, 192.0.2.1"},
        )

    assert login(client, **{"X-Forwarded-For": "198.51.100.99, 192.0.2.1"}).status_code == 429
    assert login(client, **{"X-Forwarded-For": "192.0.2.1, 192.0.2.2"}).status_code == 200


def test_a_successful_login_clears_the_accounts_failures(client):
    for attempt in range(4):
        login(client, password="wrong", **from_client(f"10.0.0.{attempt}"))
    assert login(client, **from_client("10.0.1.1")).status_code == 200

    for attempt in range(4):
        assert login(client, password="wrong", **from_client(f"10.0.2.{attempt}")).status_code == 401
    assert login(client, **from_client("10.0.3.1")).status_code == 200


def test_throttling_lifts_once_the_window_has_passed(make_app):
    client = make_app(LOGIN_MAX_FAILURES=2, LOGIN_WINDOW_SECONDS=2).test_client()
    for _ in range(2):
        assert login(client, password="wrong").status_code == 401
    locked = login(client)
    assert locked.status_code == 429
    retry_after = int(locked.headers["Retry-After"])
    assert 1 <= retry_after <= 2

    time.sleep(retry_after + 0.2)

    response = login(client, DEV_USER_EMAIL, DEV_USER_PASSWORD)
    assert response.status_code == 200, response.get_json()
