"""JWTs: HS256 only, with issuer, expiry, an id (jti) that logout revokes and
the user's token generation (`gen`) that a credential change moves on."""

import time
import uuid

import jwt
import sqlalchemy as sa

from pms_common.db import autocommit_connection
from pms_common.identity import ROLES, email_key

from .extensions import db
from .models import RevokedToken, User

ISSUER = "pms-auth"
ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["sub", "role", "iat", "exp", "jti", "iss"]
# Replicas on different hosts may disagree on the clock by a little (iat "in the future").
LEEWAY_SECONDS = 2


class InvalidToken(Exception):
    """Missing, malformed, badly signed, expired or revoked; the text says which (for the log)."""


class Tokens:
    def __init__(self, key, ttl_seconds):
        self._key = key
        self.ttl_seconds = ttl_seconds

    def issue(self, email, role, generation):
        now = int(time.time())
        claims = {
            "sub": email,
            "role": role,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "iss": ISSUER,
            "gen": generation,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def decode(self, token):
        """The claims of a well-formed, correctly signed, unexpired token.
        Whether its account still accepts it is separate (`account_refusal`):
        that needs the database."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        if claims["role"] not in ROLES:
            raise InvalidToken(f"unknown role {claims['role']!r}")
        if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 64:
            raise InvalidToken("malformed jti")
        if type(claims["iat"]) not in (int, float):  # PyJWT also takes "123"
            raise InvalidToken("malformed iat")
        # Tokens issued before generations existed have none: generation 0.
        claims.setdefault("gen", 0)
        if type(claims["gen"]) is not int:
            raise InvalidToken("malformed gen")
        return claims


# Built once: /validate runs on every request through the gateway.
ACCOUNT_LOOKUP = sa.select(
    User.role,
    User.disabled,
    User.token_generation,
    User.kept_jti,
    User.created_at,
    sa.exists().where(RevokedToken.jti == sa.bindparam("jti")).label("revoked"),
).where(User.email == sa.bindparam("email"))


def account_refusal(claims):
    """Why the token's account refuses it (revoked, user gone, disabled,
    another role, issued before a credential change or before the account
    existed), or None. One SELECT on an autocommit connection: no ORM session
    and no BEGIN/ROLLBACK round trips."""
    with autocommit_connection(db) as connection:
        account = connection.execute(
            ACCOUNT_LOOKUP, {"jti": claims["jti"], "email": email_key(claims["sub"])}
        ).first()
    if account is None:
        return "no such user"
    if account.revoked:
        return "revoked"
    if account.disabled:
        return "user disabled"
    if account.role != claims["role"]:
        return "role changed"
    # A token of an earlier account under the same email must not open this one.
    if claims["iat"] + LEEWAY_SECONDS < account.created_at.timestamp():
        return "issued before the account was created"
    if claims["gen"] != account.token_generation and claims["jti"] != account.kept_jti:
        return "issued before a credential change"
    return None
