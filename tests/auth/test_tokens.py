"""GET /validate and POST /logout: every way a token can be wrong is a 401."""

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import sqlalchemy as sa

from auth.extensions import db
from auth.models import LoginFailure, RevokedToken
from tests.auth.helpers import DEV_USER_EMAIL, JWT_SECRET, bearer, create_user, token_for


def claims(**changes):
    now = int(time.time())
    base = {
        "sub": DEV_USER_EMAIL,
        "role": "ADMIN",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": "pms-auth",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def assert_refused(response, case=""):
    assert response.status_code == 401, case
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json()
    assert body["code"] == 401 and body["status"] == "Unauthorized" and body["message"]


def test_a_valid_token_gives_who_and_role(client):
    token = token_for(client)
    response = client.get("/validate", headers=bearer(token))

    assert response.status_code == 200
    body = response.get_json()
    decoded = jwt.decode(token, options={"verify_signature": False})
    assert body == {"sub": DEV_USER_EMAIL, "role": "ADMIN", "exp": decoded["exp"], "jti": decoded["jti"]}


def test_a_user_token_carries_role_user(client):
    create_user(client, "plain@test.com", role="USER")
    token = token_for(client, "plain@test.com", "Correct-horse-42")
    assert client.get("/validate", headers=bearer(token)).get_json()["role"] == "USER"


def test_a_token_we_signed_ourselves_validates(client):
    # Guards the 401 cases below: they fail for the reason named, not because crafting is off.
    assert client.get("/validate", headers=bearer(hs256())).status_code == 200


MALFORMED_AUTHORIZATION = {
    "missing": {},
    "empty": {"Authorization": ""},
    "no token": {"Authorization": "Bearer"},
    "blank token": {"Authorization": "Bearer   "},
    "basic": {"Authorization": "Basic dGVzdHVzZXJAdGVzdC5jb206cGFzc3dvcmQxMjM="},
    "garbage": {"Authorization": "Bearer not-a-jwt"},
    "three garbage parts": {"Authorization": "Bearer a.b.c"},
}


def test_missing_or_malformed_authorization_is_401(client):
    for case, headers in MALFORMED_AUTHORIZATION.items():
        assert_refused(client.get("/validate", headers=headers), case)


def test_a_valid_token_without_the_bearer_scheme_is_401(client):
    token = token_for(client)
    assert_refused(client.get("/validate", headers={"Authorization": token}))
    assert_refused(client.get("/validate", headers={"Authorization": f"Token {token}"}))


def hs256(**changes):
    return jwt.encode(claims(**changes), JWT_SECRET, algorithm="HS256")


def forged_tokens():
    now = int(time.time())
    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}.",
        "HS512 with the right key": jwt.encode(claims(), JWT_SECRET, algorithm="HS512"),
        "HS384 with the right key": jwt.encode(claims(), JWT_SECRET, algorithm="HS384"),
        "wrong key": jwt.encode(claims(), "another-key-" + "w" * 60, algorithm="HS256"),
        "expired": hs256(iat=now - 4000, exp=now - 60),
        "issued in the future": hs256(iat=now + 3600),
        "wrong issuer": hs256(iss="someone-else"),
        "unknown role": hs256(role="ROOT"),
        "empty jti": hs256(jti=""),
        "non-string sub": hs256(sub=42),
        "string iat": hs256(iat=str(now)),
        "string gen": hs256(gen="0"),
        "float gen": hs256(gen=0.0),
        "boolean gen": hs256(gen=False),
        "unknown user": hs256(sub="nobody@test.com"),
        **{f"no {claim}": hs256(**{claim: None}) for claim in ("sub", "role", "iat", "exp", "jti", "iss")},
    }


def test_forged_expired_or_incomplete_tokens_are_401(client):
    for case, token in forged_tokens().items():
        assert_refused(client.get("/validate", headers=bearer(token)), case)


def test_a_tampered_payload_with_the_original_signature_is_401(client):
    create_user(client, "plain@test.com", role="USER")
    header, payload, signature = token_for(client, "plain@test.com", "Correct-horse-42").split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded["role"] == "USER"
    promoted = f"{header}.{b64({**decoded, 'role': 'ADMIN'})}.{signature}"

    assert_refused(client.get("/validate", headers=bearer(promoted)))


def test_logout_revokes_the_token_and_only_that_token(client):
    token, other = token_for(client), token_for(client)
    assert client.get("/validate", headers=bearer(token)).status_code == 200

    response = client.post("/logout", headers=bearer(token))

    assert response.status_code == 204 and response.get_data() == b""
    assert_refused(client.get("/validate", headers=bearer(token)))
    assert_refused(client.post("/logout", headers=bearer(token)))
    assert client.get("/validate", headers=bearer(other)).status_code == 200


def test_revocation_is_kept_until_the_token_expires(app, client):
    token = token_for(client)
    client.post("/logout", headers=bearer(token))
    jti, exp = (jwt.decode(token, options={"verify_signature": False})[key] for key in ("jti", "exp"))
    with app.app_context():
        revoked = db.session.get(RevokedToken, jti)
        assert revoked.expires_at == datetime.fromtimestamp(exp, UTC)


def test_logout_with_an_invalid_token_is_401(client):
    for case, headers in MALFORMED_AUTHORIZATION.items():
        assert_refused(client.post("/logout", headers=headers), case)
    assert_refused(
        client.post("/logout", headers=bearer(hs256(iat=int(time.time()) - 4000, exp=int(time.time()) - 60)))
    )


def test_housekeeping_deletes_expired_revocations_and_old_failures(app):
    now = datetime.now(UTC)
    with app.app_context():
        db.session.add_all(
            [
                RevokedToken(jti="expired", expires_at=now - timedelta(seconds=1)),
                RevokedToken(jti="current", expires_at=now + timedelta(hours=1)),
                LoginFailure(key="account:old@test.com", failed_at=now - timedelta(seconds=301)),
                LoginFailure(key="account:new@test.com", failed_at=now - timedelta(seconds=10)),
            ]
        )
        db.session.commit()

        assert app.extensions["housekeeping"].run_if_due()
        assert not app.extensions["housekeeping"].run_if_due(), "runs at most once per interval"

        assert set(db.session.scalars(sa.select(RevokedToken.jti))) == {"current"}
        assert set(db.session.scalars(sa.select(LoginFailure.key))) == {"account:new@test.com"}
