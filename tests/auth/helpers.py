"""Constants and request helpers the auth tests share."""
from auth.seed import DEV_USER_EMAIL, DEV_USER_PASSWORD

JWT_SECRET = "test-signing-key-" + "k" * 60  # 64+ bytes: long enough even for HS512
# Cheap hashing keeps the suite fast; the timing test uses the real defaults.
FAST_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 8192, "ARGON2_PARALLELISM": 1}


def login(client, email=DEV_USER_EMAIL, password=DEV_USER_PASSWORD, **headers):
    return client.post("/login", json={"email": email, "password": password}, headers=headers)


def token_for(client, email=DEV_USER_EMAIL, password=DEV_USER_PASSWORD):
    response = login(client, email, password)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["token"]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def create_user(client, email, password="Correct-horse-42", role="USER", **headers):
    return client.post("/users", json={"email": email, "password": password, "role": role},
                       headers=headers)
