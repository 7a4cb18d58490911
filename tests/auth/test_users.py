"""/users: create (201, 409, 422) and list, never with a secret."""
import threading
import uuid

import sqlalchemy as sa

from auth.extensions import db
from auth.models import User
from tests.auth.helpers import create_user, login


def test_create_user_returns_201_with_location_and_no_secret(client):
    response = create_user(client, "New.User@Test.com", "Correct-horse-42", "USER",
                           **{"X-User-Email": "testuser@test.com"})

    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["id", "email", "role", "createdAt", "createdBy"]
    assert body["email"] == "new.user@test.com" and body["role"] == "USER"
    assert body["createdBy"] == "testuser@test.com"
    assert body["createdAt"].endswith("+00:00")
    uuid.UUID(body["id"])
    assert response.headers["Location"].endswith(f"/users/{body['id']}")
    assert client.get(response.headers["Location"]).get_json() == body
    assert login(client, "NEW.user@test.com", "Correct-horse-42").status_code == 200


def test_created_by_is_empty_without_the_gateway_header(client):
    assert create_user(client, "anon@test.com").get_json()["createdBy"] is None


def test_password_is_stored_as_an_argon2id_hash(app, client):
    create_user(client, "hashed@test.com", "Correct-horse-42")
    with app.app_context():
        stored = db.session.scalar(sa.select(User.password_hash).where(User.email == "hashed@test.com"))
    assert stored.startswith("$argon2id$") and "Correct-horse-42" not in stored


def test_list_users_has_no_secrets(client):
    create_user(client, "second@test.com", role="ADMIN")
    response = client.get("/users")

    assert response.status_code == 200
    users = response.get_json()
    assert [user["email"] for user in users] == ["testuser@test.com", "second@test.com"]
    for user in users:
        assert set(user) == {"id", "email", "role", "createdAt", "createdBy"}
    assert b"password" not in response.get_data()


def test_unknown_user_id_is_404(client):
    assert client.get(f"/users/{uuid.uuid4()}").status_code == 404


def test_duplicate_email_in_another_case_is_409(client):
    assert create_user(client, "dup@test.com").status_code == 201
    response = create_user(client, "DUP@Test.COM")

    assert response.status_code == 409
    assert "email" in response.get_json()["errors"]["json"]


def test_two_concurrent_creates_of_one_email_give_one_201_and_one_409(app):
    for round_number in range(3):
        email = f"race{round_number}@test.com"
        start = threading.Barrier(2)
        statuses = []

        def create(spelling):
            client = app.test_client()
            start.wait()
            statuses.append(create_user(client, spelling).status_code)

        threads = [threading.Thread(target=create, args=(spelling,))
                   for spelling in (email, email.upper())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(statuses) == [201, 409]
        with app.app_context():
            assert db.session.scalar(
                sa.select(sa.func.count()).select_from(User).where(User.email == email)) == 1


WEAK_PASSWORDS = {
    "Short-1": "fewer than 12 characters",
    "alllowercaseletters": "one kind of character",
    "123456789012345": "one kind of character",
    "weak.user@test.com": "the email itself",
    "Weak.User@Test.com!2": "contains the email",
}


def test_weak_passwords_are_422_naming_password(app, client):
    for password, why in WEAK_PASSWORDS.items():
        response = create_user(client, "weak.user@test.com", password)
        assert response.status_code == 422, why
        assert list(response.get_json()["errors"]["json"]) == ["password"], why
    assert create_user(client, "weak.user@test.com", "Twelve-chars").status_code == 201


INVALID_BODIES = [
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "ROOT"}, "role"),
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "admin"}, "role"),
    ({"email": "a@test.com", "password": "Correct-horse-42"}, "role"),
    ({"email": "not-an-email", "password": "Correct-horse-42", "role": "USER"}, "email"),
    ({"password": "Correct-horse-42", "role": "USER"}, "email"),
    ({"email": "a@test.com", "role": "USER"}, "password"),
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "USER", "id": "x"}, "id"),
    ({"email": "a@test.com", "password": "Correct-horse-42", "role": "USER", "isAdmin": True}, "isAdmin"),
    ([{"email": "a@test.com"}], "_schema"),
]


def test_invalid_user_bodies_are_422_naming_the_field_and_write_nothing(app, client):
    for body, field in INVALID_BODIES:
        response = client.post("/users", json=body)
        assert response.status_code == 422, body
        assert field in response.get_json()["errors"]["json"], body
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 1  # the seed only


def test_malformed_json_is_400(client):
    response = client.post("/users", data="{not json", content_type="application/json")
    assert response.status_code == 400


def test_a_page_past_the_end_is_empty_even_an_absurd_one(client):
    for page in (2, 10**30):
        response = client.get("/users", query_string={"page": page})
        assert response.status_code == 200 and response.get_json() == []
