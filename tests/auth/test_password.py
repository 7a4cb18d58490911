"""POST /password: a user changes their own password; their other tokens stop working."""

import jwt
import pytest

from tests.auth.helpers import (
    DEV_USER_EMAIL,
    DEV_USER_PASSWORD,
    GOOD_PASSWORD,
    bearer,
    create_user,
    login,
    token_for,
)
from tests.auth.test_tokens import assert_refused

NEW_PASSWORD = "correct horse battery staple"


def change_password(client, token, current=GOOD_PASSWORD, new=NEW_PASSWORD, **headers):
    return client.post(
        "/password",
        json={"currentPassword": current, "newPassword": new},
        headers={**bearer(token), **headers},
    )


@pytest.fixture
def user_client(client):
    assert create_user(client, "plain@test.com").status_code == 201
    return client


def test_a_change_replaces_the_password(user_client):
    token = token_for(user_client, "plain@test.com", GOOD_PASSWORD)

    response = change_password(user_client, token)

    assert response.status_code == 204 and response.get_data() == b""
    assert login(user_client, "plain@test.com", GOOD_PASSWORD).status_code == 401
    assert login(user_client, "plain@test.com", NEW_PASSWORD).status_code == 200


def test_only_the_token_that_made_the_change_survives_it(user_client):
    """All within one second, usually: an iat-based cut-off could not tell these apart."""
    client = user_client
    older, changer = (token_for(client, "plain@test.com", GOOD_PASSWORD) for _ in range(2))
    someone_else = token_for(client)

    assert change_password(client, changer).status_code == 204

    assert_refused(client.get("/validate", headers=bearer(older)))
    assert client.get("/validate", headers=bearer(changer)).status_code == 200
    assert client.get("/validate", headers=bearer(someone_else)).status_code == 200
    newer = token_for(client, "plain@test.com", NEW_PASSWORD)
    assert client.get("/validate", headers=bearer(newer)).status_code == 200


def test_a_second_change_from_another_token_retires_the_first_changer(user_client):
    client = user_client
    first = token_for(client, "plain@test.com", GOOD_PASSWORD)
    assert change_password(client, first).status_code == 204
    second = token_for(client, "plain@test.com", NEW_PASSWORD)

    assert change_password(client, second, NEW_PASSWORD, "Another-horse-43-staple").status_code == 204

    assert_refused(client.get("/validate", headers=bearer(first)))
    assert client.get("/validate", headers=bearer(second)).status_code == 200


def test_the_dev_users_weak_password_can_be_replaced(client):
    token = token_for(client)
    assert change_password(client, token, DEV_USER_PASSWORD).status_code == 204
    assert login(client, DEV_USER_EMAIL, NEW_PASSWORD).status_code == 200


def test_a_wrong_current_password_is_401_naming_it_and_changes_nothing(user_client):
    token = token_for(user_client, "plain@test.com", GOOD_PASSWORD)

    response = change_password(user_client, token, current="not-the-password")

    assert response.status_code == 401
    assert list(response.get_json()["errors"]["json"]) == ["currentPassword"]
    assert login(user_client, "plain@test.com", GOOD_PASSWORD).status_code == 200
    assert user_client.get("/validate", headers=bearer(token)).status_code == 200


def test_wrong_current_passwords_count_as_failed_logins(make_app):
    client = make_app(LOGIN_MAX_FAILURES=3).test_client()
    create_user(client, "plain@test.com")
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    for _ in range(3):
        assert change_password(client, token, current="not-the-password").status_code == 401

    assert login(client, "plain@test.com", GOOD_PASSWORD).status_code == 429
    throttled = change_password(client, token)
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert login(client, "plain@test.com", NEW_PASSWORD).status_code == 429


@pytest.mark.parametrize(
    "weak, why",
    [
        ("Short-1", "at least 12 characters"),
        ("aaaaaaaaaaa1", "Repeats"),
        ("password1234", "very common password"),
        ("Password123!", "similar to a commonly used password"),
        ("plain@test.com-1", "contains the email"),
        (GOOD_PASSWORD, "differ from the current password"),
    ],
)
def test_a_weak_new_password_is_422_naming_it(user_client, weak, why):
    token = token_for(user_client, "plain@test.com", GOOD_PASSWORD)

    response = change_password(user_client, token, new=weak)

    assert response.status_code == 422
    errors = response.get_json()["errors"]["json"]
    assert list(errors) == ["newPassword"] and why in errors["newPassword"][0], errors
    assert user_client.get("/validate", headers=bearer(token)).status_code == 200


INVALID_BODIES = [
    ({"newPassword": NEW_PASSWORD}, "currentPassword"),
    ({"currentPassword": GOOD_PASSWORD}, "newPassword"),
    ({"currentPassword": "", "newPassword": NEW_PASSWORD}, "currentPassword"),
    ({"currentPassword": GOOD_PASSWORD, "newPassword": 12345678901234}, "newPassword"),
    ({"currentPassword": GOOD_PASSWORD, "newPassword": "x" * 1025}, "newPassword"),
    ({"currentPassword": GOOD_PASSWORD, "newPassword": NEW_PASSWORD, "email": "a@test.com"}, "email"),
    ([NEW_PASSWORD], "_schema"),
]


def test_invalid_bodies_are_422_naming_the_field(user_client):
    token = token_for(user_client, "plain@test.com", GOOD_PASSWORD)
    for body, field in INVALID_BODIES:
        response = user_client.post("/password", json=body, headers=bearer(token))
        assert response.status_code == 422, body
        assert field in response.get_json()["errors"]["json"], body
    assert login(user_client, "plain@test.com", GOOD_PASSWORD).status_code == 200


def test_without_a_valid_token_it_is_401_before_the_body_is_read(user_client):
    token = token_for(user_client, "plain@test.com", GOOD_PASSWORD)
    user_client.post("/logout", headers=bearer(token))
    for headers in ({}, bearer("not-a-jwt"), bearer(token)):
        for body in ({"currentPassword": GOOD_PASSWORD, "newPassword": NEW_PASSWORD}, {}):
            assert_refused(user_client.post("/password", json=body, headers=headers))
    assert login(user_client, "plain@test.com", GOOD_PASSWORD).status_code == 200


def test_the_token_names_its_generation(user_client):
    token = token_for(user_client, "plain@test.com", GOOD_PASSWORD)
    assert jwt.decode(token, options={"verify_signature": False})["gen"] == 0
    change_password(user_client, token)
    newer = token_for(user_client, "plain@test.com", NEW_PASSWORD)
    assert jwt.decode(newer, options={"verify_signature": False})["gen"] == 1
