"""POST /login: tokens, one answer for every bad credential, input checks, rehashing."""

import statistics
import time

import jwt
import sqlalchemy as sa

from auth.extensions import db
from auth.models import User
from tests.auth.helpers import DEV_USER_EMAIL, JWT_SECRET, bearer, create_user, login


def test_login_returns_a_bearer_jwt_with_the_expected_claims(client):
    before = int(time.time())
    response = login(client)

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"token", "expiresIn", "tokenType"}
    assert body["tokenType"] == "Bearer" and body["expiresIn"] == 3600
    assert response.headers["Cache-Control"] == "no-store"
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"], issuer="pms-auth")
    assert claims["sub"] == DEV_USER_EMAIL and claims["role"] == "ADMIN"
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] == claims["iat"] + 3600
    assert len(claims["jti"]) == 32 and int(claims["jti"], 16) >= 0


def test_each_login_gets_its_own_token_id(client):
    first, second = (
        jwt.decode(login(client).get_json()["token"], options={"verify_signature": False}) for _ in range(2)
    )
    assert first["jti"] != second["jti"]


def test_token_lifetime_is_configurable(make_app):
    client = make_app(JWT_TTL_SECONDS=120).test_client()
    body = login(client).get_json()
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert body["expiresIn"] == 120 and claims["exp"] - claims["iat"] == 120


def test_email_is_compared_case_insensitively(client):
    response = login(client, email="TestUser@TEST.com")
    assert response.status_code == 200
    token = response.get_json()["token"]
    assert client.get("/validate", headers=bearer(token)).get_json()["sub"] == DEV_USER_EMAIL


def test_a_look_alike_spelling_of_the_email_finds_the_account(client):
    full_width = "\uff34\uff45\uff53\uff54\uff35\uff53\uff45\uff52@test.com"  # ＴｅｓｔＵｓｅｒ
    response = login(client, email=full_width)
    assert response.status_code == 200
    claims = jwt.decode(response.get_json()["token"], options={"verify_signature": False})
    assert claims["sub"] == DEV_USER_EMAIL


def test_unknown_user_and_wrong_password_get_the_same_answer(client):
    unknown = login(client, email="nobody@test.com")
    wrong = login(client, password="password124")

    assert unknown.status_code == wrong.status_code == 401
    assert unknown.get_json() == wrong.get_json()
    assert unknown.get_json()["message"] == "Invalid email or password."
    assert unknown.headers["WWW-Authenticate"] == wrong.headers["WWW-Authenticate"] == "Bearer"


BAD_BODIES = [
    ({"password": "password123"}, "email"),
    ({"email": DEV_USER_EMAIL}, "password"),
    ({"email": "not-an-email", "password": "password123"}, "email"),
    ({"email": DEV_USER_EMAIL, "password": ""}, "password"),
    ({"email": DEV_USER_EMAIL, "password": 123}, "password"),
    ({"email": DEV_USER_EMAIL, "password": "password123", "role": "ADMIN"}, "role"),
]


def test_bad_login_bodies_are_422_naming_the_field(client):
    for body, field in BAD_BODIES:
        response = client.post("/login", json=body)
        assert response.status_code == 422, body
        assert field in response.get_json()["errors"]["json"], body


def test_malformed_json_is_400(client):
    response = client.post("/login", data='{"email": ', content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == 400


def test_login_rehashes_a_password_hashed_with_other_parameters(make_app, app):
    create_user(app.test_client(), "rehash@test.com", "Rehash-me-please-1")
    stronger = make_app(seed=False, ARGON2_TIME_COST=2, ARGON2_MEMORY_KIB=16384)
    with stronger.app_context():
        old_hash = db.session.scalar(sa.select(User.password_hash).where(User.email == "rehash@test.com"))
    assert "m=8192,t=1" in old_hash

    assert login(stronger.test_client(), "rehash@test.com", "Rehash-me-please-1").status_code == 200

    with stronger.app_context():
        new_hash = db.session.scalar(sa.select(User.password_hash).where(User.email == "rehash@test.com"))
    assert new_hash.startswith("$argon2id$") and "m=16384,t=2" in new_hash
    assert login(stronger.test_client(), "rehash@test.com", "Rehash-me-please-1").status_code == 200


def test_unknown_user_takes_as_long_as_a_wrong_password(make_app):
    """The dummy hash check makes both cost one real argon2 verification.
    Attempts alternate so that machine noise hits both series alike. The cost
    is OWASP's argon2id minimum: hashing dominates (as in production) while a
    loaded test machine still gets through quickly."""
    client = make_app(
        ARGON2_TIME_COST=2,
        ARGON2_MEMORY_KIB=19456,
        ARGON2_PARALLELISM=1,
        LOGIN_MAX_FAILURES=1000,
        LOGIN_MAX_FAILURES_PER_CLIENT=1000,
    ).test_client()
    login(client, "warm@test.com", "x")
    timings = {"unknown": [], "wrong": []}
    for attempt in range(10):
        for kind, email in (("unknown", f"nobody{attempt}@test.com"), ("wrong", DEV_USER_EMAIL)):
            started = time.perf_counter()
            assert login(client, email, "wrong-password").status_code == 401
            timings[kind].append(time.perf_counter() - started)

    # The mean without each series' slowest and fastest try: one scheduler hiccup must not decide.
    unknown, wrong = (statistics.mean(sorted(series)[1:-1]) for series in timings.values())
    assert max(unknown, wrong) / min(unknown, wrong) < 1.5, timings
    assert min(unknown, wrong) > 0.005, "a real argon2 verification costs milliseconds"
