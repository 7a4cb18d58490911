"""PATCH /users/{id} (role, disabled, never the last enabled ADMIN) and what
/validate and /login make of a changed, disabled or removed account."""

import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from auth.extensions import db
from auth.models import User
from tests.auth.helpers import (
    ADMIN_IDENTITY,
    DEV_USER_EMAIL,
    GOOD_PASSWORD,
    bearer,
    create_user,
    identity,
    login,
    patch_user,
    token_for,
    user_id_of,
)
from tests.auth.test_tokens import assert_refused, hs256

INVALID_TOKEN_BODY = {
    "code": 401,
    "status": "Unauthorized",
    "message": "The token is missing, invalid, expired or revoked.",
}


def new_user(client, email="plain@test.com", role="USER"):
    response = create_user(client, email, role=role)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def validate(client, token):
    return client.get("/validate", headers=bearer(token))


def assert_refused_like_a_bad_token(response):
    assert_refused(response)
    assert response.get_json() == INVALID_TOKEN_BODY


def test_a_token_of_an_unchanged_user_stays_valid(client):
    new_user(client)
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    patch_user(client, user_id_of(client, DEV_USER_EMAIL), disabled=False)  # another user, no change
    assert validate(client, token).status_code == 200


def test_a_removed_users_token_is_refused(app, client):
    new_user(client)
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    with app.app_context():
        db.session.execute(sa.delete(User).where(User.email == "plain@test.com"))
        db.session.commit()
    assert_refused_like_a_bad_token(validate(client, token))


def test_a_token_of_an_earlier_account_under_the_same_email_is_refused(app, client):
    new_user(client)
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    with app.app_context():
        db.session.execute(sa.delete(User).where(User.email == "plain@test.com"))
        db.session.commit()
    new_user(client)
    with app.app_context():  # as if the new account were made a little later
        user = db.session.scalars(sa.select(User).where(User.email == "plain@test.com")).one()
        user.created_at += timedelta(seconds=5)
        db.session.commit()
    assert_refused_like_a_bad_token(validate(client, token))


def test_a_login_just_after_creation_on_a_clock_a_little_behind_is_valid(app, client):
    new_user(client)
    with app.app_context():  # as if another replica, a second ahead, had created it
        user = db.session.scalars(sa.select(User).where(User.email == "plain@test.com")).one()
        user.created_at += timedelta(seconds=1)
        db.session.commit()
    assert validate(client, token_for(client, "plain@test.com", GOOD_PASSWORD)).status_code == 200


def test_disabling_a_user_refuses_their_tokens_and_their_logins(client):
    user_id = new_user(client)
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    wrong_password = login(client, "plain@test.com", "not-the-password")

    response = patch_user(client, user_id, disabled=True)

    assert response.status_code == 200
    assert response.get_json()["disabled"] is True
    assert_refused_like_a_bad_token(validate(client, token))
    refused = login(client, "plain@test.com", GOOD_PASSWORD)
    assert refused.status_code == 401
    assert refused.get_json() == wrong_password.get_json()
    assert refused.headers["WWW-Authenticate"] == wrong_password.headers["WWW-Authenticate"]


def test_a_disabled_users_right_password_counts_as_a_failed_login(make_app):
    client = make_app(LOGIN_MAX_FAILURES=2).test_client()
    user_id = new_user(client)
    patch_user(client, user_id, disabled=True)
    for _ in range(2):
        assert login(client, "plain@test.com", GOOD_PASSWORD).status_code == 401
    assert login(client, "plain@test.com", GOOD_PASSWORD).status_code == 429


def test_enabling_again_allows_logins_but_not_the_tokens_from_before(client):
    user_id = new_user(client)
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    patch_user(client, user_id, disabled=True)

    response = patch_user(client, user_id, disabled=False)

    assert response.status_code == 200 and response.get_json()["disabled"] is False
    assert_refused_like_a_bad_token(validate(client, token))
    assert validate(client, token_for(client, "plain@test.com", GOOD_PASSWORD)).status_code == 200


def test_a_demoted_admins_admin_token_is_refused(client):
    user_id = new_user(client, "second@test.com", role="ADMIN")
    admin_token = token_for(client, "second@test.com", GOOD_PASSWORD)

    response = patch_user(client, user_id, role="USER")

    assert response.status_code == 200 and response.get_json()["role"] == "USER"
    assert_refused_like_a_bad_token(validate(client, admin_token))
    user_token = token_for(client, "second@test.com", GOOD_PASSWORD)
    assert validate(client, user_token).get_json()["role"] == "USER"


def test_a_promoted_users_user_token_is_refused(client):
    user_id = new_user(client)
    user_token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    assert patch_user(client, user_id, role="ADMIN").get_json()["role"] == "ADMIN"
    assert_refused_like_a_bad_token(validate(client, user_token))


def test_a_token_naming_another_role_than_the_users_is_refused(client):
    # Signed with the right key, so only the account check can refuse it.
    assert_refused_like_a_bad_token(validate(client, hs256(role="USER")))
    assert validate(client, hs256(role="ADMIN")).status_code == 200


def test_patch_answers_the_user_and_get_agrees(client):
    user_id = new_user(client)
    body = patch_user(client, user_id, role="ADMIN", disabled=True).get_json()
    assert body["role"] == "ADMIN" and body["disabled"] is True and body["id"] == user_id
    assert client.get(f"/users/{user_id}", headers=ADMIN_IDENTITY).get_json() == body


def test_an_empty_patch_changes_nothing_and_keeps_tokens(client):
    user_id = new_user(client)
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    before = client.get(f"/users/{user_id}", headers=ADMIN_IDENTITY).get_json()
    for changes in ({}, {"role": "USER"}, {"disabled": False}):
        assert patch_user(client, user_id, **changes).get_json() == before
    assert validate(client, token).status_code == 200


def test_patch_of_an_unknown_user_is_404(client):
    response = patch_user(client, uuid.uuid4(), disabled=True)
    assert response.status_code == 404 and response.get_json()["code"] == 404


INVALID_PATCHES = [
    ({"role": "ROOT"}, "role"),
    ({"role": "admin"}, "role"),
    ({"role": None}, "role"),
    ({"role": 1}, "role"),
    ({"disabled": "true"}, "disabled"),
    ({"disabled": 1}, "disabled"),
    ({"disabled": None}, "disabled"),
    ({"email": "other@test.com"}, "email"),
    ({"password": "Another-horse-43"}, "password"),
    ({"createdBy": "me"}, "createdBy"),
    ({"tokenGeneration": 0}, "tokenGeneration"),
    ([{"disabled": True}], "_schema"),
]


def test_invalid_patches_are_422_naming_the_field_and_change_nothing(client):
    user_id = new_user(client)
    before = client.get(f"/users/{user_id}", headers=ADMIN_IDENTITY).get_json()
    for body, field in INVALID_PATCHES:
        response = client.patch(f"/users/{user_id}", json=body, headers=ADMIN_IDENTITY)
        assert response.status_code == 422, body
        assert field in response.get_json()["errors"]["json"], (body, response.get_json())
    assert client.get(f"/users/{user_id}", headers=ADMIN_IDENTITY).get_json() == before


@pytest.mark.parametrize(
    "changes", [{"role": "USER"}, {"disabled": True}, {"role": "USER", "disabled": True}]
)
def test_the_last_enabled_admin_can_be_neither_demoted_nor_disabled(client, changes):
    seed_id = user_id_of(client, DEV_USER_EMAIL)
    token = token_for(client)

    response = patch_user(client, seed_id, **changes)

    assert response.status_code == 409
    assert "no enabled ADMIN" in response.get_json()["message"]
    after = client.get(f"/users/{seed_id}", headers=ADMIN_IDENTITY).get_json()
    assert after["role"] == "ADMIN" and after["disabled"] is False
    assert validate(client, token).status_code == 200


def test_a_disabled_admin_does_not_count_as_the_remaining_admin(client):
    second = new_user(client, "second@test.com", role="ADMIN")
    assert patch_user(client, second, disabled=True).status_code == 200
    assert patch_user(client, user_id_of(client, DEV_USER_EMAIL), role="USER").status_code == 409
    # Demoting the disabled one takes nothing away.
    assert patch_user(client, second, role="USER").status_code == 200


def test_an_admin_may_step_down_while_another_is_enabled(client):
    new_user(client, "second@test.com", role="ADMIN")
    seed_id = user_id_of(client, DEV_USER_EMAIL)
    assert patch_user(client, seed_id, role="USER").status_code == 200
    # Now the second is the last one.
    second = user_id_of(client, "second@test.com")
    assert patch_user(client, second, disabled=True, headers=identity("second@test.com")).status_code == 409


def test_two_admins_disabling_each_other_at_once_leave_one_enabled(app):
    client = app.test_client()
    for round_number in range(3):
        other = f"other{round_number}@test.com"
        ids = [user_id_of(client, DEV_USER_EMAIL), new_user(client, other, role="ADMIN")]
        start = threading.Barrier(2)
        statuses = []

        def disable(user_id, start=start, statuses=statuses):
            start.wait()
            statuses.append(patch_user(app.test_client(), user_id, disabled=True).status_code)

        threads = [threading.Thread(target=disable, args=(user_id,)) for user_id in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(statuses) == [200, 409]
        with app.app_context():
            enabled = db.session.scalars(
                sa.select(User.email).where(User.role == "ADMIN", User.disabled.is_(False))
            ).all()
        assert len(enabled) == 1
        # Back to one enabled seed admin for the next round.
        if enabled == [other]:
            patch_user(client, ids[0], disabled=False)
            patch_user(client, ids[1], disabled=True)


def test_a_changed_account_logs_who_changed_which_user_and_fields(client, caplog):
    user_id = new_user(client)
    caplog.clear()
    with caplog.at_level("INFO", logger="auth"):
        patch_user(client, user_id, role="ADMIN", disabled=True, headers=identity("boss@test.com"))
    [record] = [record for record in caplog.records if record.getMessage() == "user changed"]
    assert (record.user_id, record.by, record.fields) == (user_id, "boss@test.com", ["disabled", "role"])
    assert (record.role, record.disabled) == ("ADMIN", True)


def test_validate_checks_token_and_account_in_one_statement(app, client):
    token = token_for(client)
    statements = []

    def record(_connection, _cursor, statement, *_args):
        statements.append(statement)

    # On every engine: the check may run on the app's autocommit pool.
    sa.event.listen(Engine, "before_cursor_execute", record)
    try:
        assert validate(client, token).status_code == 200
    finally:
        sa.event.remove(Engine, "before_cursor_execute", record)
    assert len(statements) == 1, statements
