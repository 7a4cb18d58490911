"""Constants and request helpers the auth tests share."""

from auth.seed import DEV_USER_EMAIL, DEV_USER_PASSWORD
from pms_common.identity import ROLE_HEADER, USER_HEADER

# Random (secrets.token_urlsafe(48)): a guessable key is refused even in dev.
JWT_SECRET = "A-M1M6ZlSRTh77oItlL3kBYcE1Qu_TezEijUTkBsBDB0RmvG_IdfrdXbGriVShPQ"
OTHER_STRONG_KEY = "yL-dB3tExhd5YZbnTi5lrYCvinQF0X-tUaiHoijhCWaH-VD4ppQE1e-tXxumhMJv"
# Cheap hashing keeps the suite fast; the timing test uses the real defaults.
FAST_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 8192, "ARGON2_PARALLELISM": 1}
GOOD_PASSWORD = "Correct-horse-42"


def identity(email=DEV_USER_EMAIL, role="ADMIN"):
    """The headers the gateway sets for a caller whose token it validated."""
    return {USER_HEADER: email, ROLE_HEADER: role}


ADMIN_IDENTITY = identity()


def login(client, email=DEV_USER_EMAIL, password=DEV_USER_PASSWORD, **headers):
    return client.post("/login", json={"email": email, "password": password}, headers=headers)


def token_for(client, email=DEV_USER_EMAIL, password=DEV_USER_PASSWORD):
    response = login(client, email, password)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["token"]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def create_user(client, email, password=GOOD_PASSWORD, role="USER", **headers):
    """POST /users as the dev ADMIN (headers given replace the identity's)."""
    return client.post(
        "/users",
        json={"email": email, "password": password, "role": role},
        headers={**ADMIN_IDENTITY, **headers},
    )


def patch_user(client, user_id, headers=ADMIN_IDENTITY, **changes):
    return client.patch(f"/users/{user_id}", json=changes, headers=headers)


def user_id_of(client, email):
    users = client.get("/users", headers=ADMIN_IDENTITY).get_json()
    return next(user["id"] for user in users if user["email"] == email)
