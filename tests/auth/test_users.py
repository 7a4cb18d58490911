"""/users: create (201, 409, 422) and list, never with a secret, ADMIN only."""

import threading
import uuid

import pytest
import sqlalchemy as sa

from auth.extensions import db
from auth.models import User
from tests.auth.helpers import ADMIN_IDENTITY, GOOD_PASSWORD, create_user, identity, login


def test_create_user_returns_201_with_location_and_no_secret(client):
    response = create_user(
        client, "New.User@Test.com", "Correct-horse-42", "USER", **identity("boss@test.com")
    )

    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["id", "email", "role", "disabled", "createdAt", "createdBy"]
    assert body["email"] == "new.user@test.com" and body["role"] == "USER"
    assert body["disabled"] is False
    assert body["createdBy"] == "boss@test.com"
    assert body["createdAt"].endswith("+00:00")
    uuid.UUID(body["id"])
    # The path a client of the gateway follows; the service itself serves it without /auth.
    assert response.headers["Location"] == f"/auth/users/{body['id']}"
    assert (
        client.get(response.headers["Location"].removeprefix("/auth"), headers=ADMIN_IDENTITY).get_json()
        == body
    )
    assert login(client, "NEW.user@test.com", "Correct-horse-42").status_code == 200


def admin_operations(user_id):
    return [
        ("get", "/users", None),
        ("post", "/users", {"email": "sneaky@test.com", "password": GOOD_PASSWORD, "role": "ADMIN"}),
        ("get", f"/users/{user_id}", None),
        ("patch", f"/users/{user_id}", {"role": "USER"}),
    ]


REFUSED_IDENTITIES = [
    ({}, 401),
    ({"X-User-Role": "ADMIN"}, 401),  # a role without a user is no identity
    ({"X-User-Email": "testuser@test.com"}, 401),
    (identity("plain@test.com", "USER"), 403),
    (identity("plain@test.com", "admin"), 403),
    (identity("patient-service", "SERVICE"), 403),
    (identity("plain@test.com", "ROOT"), 403),
]


@pytest.mark.parametrize("headers, status", REFUSED_IDENTITIES)
def test_every_admin_operation_is_refused_without_an_admin_identity(app, client, headers, status):
    """The service checks the role itself: a gateway route mistake alone opens nothing."""
    seed_id = client.get("/users", headers=ADMIN_IDENTITY).get_json()[0]["id"]
    for method, path, body in admin_operations(seed_id):
        response = getattr(client, method)(path, json=body, headers=headers)
        assert response.status_code == status, (method, path)
        assert response.get_json()["code"] == status and response.get_json()["message"]
        if status == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"
    with app.app_context():
        assert db.session.execute(sa.select(User.email, User.role)).all() == [("testuser@test.com", "ADMIN")]


def test_the_role_is_checked_before_the_body(client):
    response = client.post("/users", json={"role": "ROOT"})
    assert response.status_code == 401


def test_password_is_stored_as_an_argon2id_hash(app, client):
    create_user(client, "hashed@test.com", "Correct-horse-42")
    with app.app_context():
        stored = db.session.scalar(sa.select(User.password_hash).where(User.email == "hashed@test.com"))
    assert stored.startswith("$argon2id$") and "Correct-horse-42" not in stored


def test_list_users_has_no_secrets(client):
    create_user(client, "second@test.com", role="ADMIN")
    response = client.get("/users", headers=ADMIN_IDENTITY)

    assert response.status_code == 200
    users = response.get_json()
    assert [user["email"] for user in users] == ["testuser@test.com", "second@test.com"]
    for user in users:
        assert set(user) == {"id", "email", "role", "disabled", "createdAt", "createdBy"}
    assert b"password" not in response.get_data()


def test_unknown_user_id_is_404(client):
    assert client.get(f"/users/{uuid.uuid4()}", headers=ADMIN_IDENTITY).status_code == 404


@pytest.mark.parametrize(
    "look_alike",
    [
        "DUP@Test.COM",
        "\uff24\uff35\uff30@test.com",  # full-width DUP
        "dup@\uff54\uff45\uff53\uff54.com",  # full-width test
        "\u212aate@test.com",  # KELVIN SIGN for k
    ],
)
def test_a_look_alike_of_an_existing_email_is_409(client, look_alike):
    original = "kate@test.com" if "ate@" in look_alike else "dup@test.com"
    assert create_user(client, original).status_code == 201
    response = create_user(client, look_alike)

    assert response.status_code == 409
    assert "email" in response.get_json()["errors"]["json"]
    assert login(client, look_alike, GOOD_PASSWORD).status_code == 200


def test_emails_are_stored_normalised_and_case_folded(client):
    body = create_user(client, "\uff2e\uff45\uff57.Stra\u00dfe@Test.com").get_json()
    assert body["email"] == "new.strasse@test.com"


def test_two_concurrent_creates_of_one_email_give_one_201_and_one_409(app):
    for round_number in range(3):
        email = f"race{round_number}@test.com"
        start = threading.Barrier(2)
        statuses = []

        def create(spelling, start=start, statuses=statuses):
            client = app.test_client()
            start.wait()
            statuses.append(create_user(client, spelling).status_code)

        threads = [threading.Thread(target=create, args=(spelling,)) for spelling in (email, email.upper())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(statuses) == [201, 409]
        with app.app_context():
            assert (
                db.session.scalar(sa.select(sa.func.count()).select_from(User).where(User.email == email))
                == 1
            )


WEAK_PASSWORDS = {
    "Short-1": "at least 12 characters",
    "aaaaaaaaaaa1": "Repeats",
    "password1234": "very common password",
    "Password123!": "similar to a commonly used password",
    "123456789012345": "commonly used password",
    "weak.user@test.com": "contains the email",
    "Weak.User@Test.com!2": "contains the email",
}


def test_weak_passwords_are_422_naming_password_and_what_is_wrong(app, client):
    for password, why in WEAK_PASSWORDS.items():
        response = create_user(client, "weak.user@test.com", password)
        assert response.status_code == 422, password
        errors = response.get_json()["errors"]["json"]
        assert list(errors) == ["password"], password
        assert why in errors["password"][0], (password, errors)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_the_local_part_of_the_email_counts_as_guessable(client):
    """zxcvbn knows the email's local part, not only the whole address."""
    response = create_user(client, "zorglubfrobnik@test.com", "zorglubfrobnik12")
    assert response.status_code == 422
    assert "contains the email" in response.get_json()["errors"]["json"]["password"][0]


@pytest.mark.parametrize("passphrase", ["correct horse battery staple", "correcthorsebatterystaple"])
def test_a_passphrase_is_accepted_without_composition_rules(client, passphrase):
    assert create_user(client, "phrase@test.com", passphrase).status_code == 201
    assert login(client, "phrase@test.com", passphrase).status_code == 200


INVALID_BODIES = [
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "ROOT"}, "role"),
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "admin"}, "role"),
    ({"email": "a@test.com", "password": "Correct-horse-42"}, "role"),
    ({"email": "not-an-email", "password": "Correct-horse-42", "role": "USER"}, "email"),
    ({"password": "Correct-horse-42", "role": "USER"}, "email"),
    ({"email": "a@test.com", "role": "USER"}, "password"),
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "USER", "id": "x"}, "id"),
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "USER", "isAdmin": True}, "isAdmin"),
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "USER", "disabled": True}, "disabled"),
    ({"email": "a@test.com", "password": "Correct-horse-\ud800-42", "role": "USER"}, "password"),
    ({"email": "a@test.com", "password": "Correct-horse-\x00-42", "role": "USER"}, "password"),
    ({"email": "a\ud800@test.com", "password": "Correct-horse-42", "role": "USER"}, "email"),
    ({"email": "a\x00@test.com", "password": "Correct-horse-42", "role": "USER"}, "email"),
    ([{"email": "a@test.com"}], "_schema"),
]


def test_invalid_user_bodies_are_422_naming_the_field_and_write_nothing(app, client):
    for body, field in INVALID_BODIES:
        response = client.post("/users", json=body, headers=ADMIN_IDENTITY)
        assert response.status_code == 422, body
        assert field in response.get_json()["errors"]["json"], body
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 1  # the seed only


def test_malformed_json_is_400(client):
    response = client.post(
        "/users", data="{not json", content_type="application/json", headers=ADMIN_IDENTITY
    )
    assert response.status_code == 400


def test_a_page_past_the_end_is_empty_even_an_absurd_one(client):
    for page in (2, 10**30):
        response = client.get("/users", query_string={"page": page}, headers=ADMIN_IDENTITY)
        assert response.status_code == 200 and response.get_json() == []
