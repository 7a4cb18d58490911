"""JWTs: HS256 only, with issuer, expiry and an id (jti) that logout revokes."""
import time
import uuid

import jwt
import sqlalchemy as sa

from .extensions import db
from .models import ROLES, RevokedToken

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

    def issue(self, email, role):
        now = int(time.time())
        claims = {"sub": email, "role": role, "iat": now, "exp": now + self.ttl_seconds,
                  "jti": uuid.uuid4().hex, "iss": ISSUER}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def decode(self, token):
        """The claims of a well-formed, correctly signed, unexpired token.
        Revocation is separate (`is_revoked`): it needs the database."""
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=ISSUER,
                                leeway=LEEWAY_SECONDS, options={"require": REQUIRED_CLAIMS})
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        if claims["role"] not in ROLES:
            raise InvalidToken(f"unknown role {claims['role']!r}")
        if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 64:
            raise InvalidToken("malformed jti")
        return claims


# Built once: /validate runs on every request through the gateway.
REVOCATION_LOOKUP = sa.select(sa.literal(1)).where(RevokedToken.jti == sa.bindparam("jti"))


def is_revoked(jti):
    """One primary-key lookup on an autocommit connection: no ORM session and
    no BEGIN/ROLLBACK round trips around it."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return connection.execute(REVOCATION_LOOKUP, {"jti": jti}).first() is not None


def bearer_token(authorization_header):
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (authorization_header or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
