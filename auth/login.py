"""/login, /validate, /logout: issuing, checking and revoking tokens."""
import logging
from datetime import datetime, timezone

import sqlalchemy as sa
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import RevokedToken, User
from .schemas import ClaimsSchema, LoginSchema, TokenSchema
from .throttle import account_key, client_address, client_key
from .tokens import InvalidToken, bearer_token, is_revoked

log = logging.getLogger(__name__)
blp = Blueprint("tokens", __name__, description="Log in, validate a token, log out.")

BEARER_AUTH = [{"bearerAuth": []}]
INVALID_CREDENTIALS = "Invalid email or password."
INVALID_TOKEN = "The token is missing, invalid, expired or revoked."


def require_token():
    """The claims of the request's bearer token, or a 401 with a Bearer challenge."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        abort(401, message="A bearer token is required.", headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = current_app.extensions["tokens"].decode(token)
        if is_revoked(claims["jti"]):
            raise InvalidToken("revoked")
    except InvalidToken as exc:
        log.info("token refused", extra={"reason": str(exc)})
        abort(401, message=INVALID_TOKEN, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return claims


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema())
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, description="Unknown email or wrong password (the same answer for both)")
    @blp.alt_response(429, description="Too many failed logins for this account or client; "
                                        "see `Retry-After`")
    def post(self, credentials):
        """Log in

        Returns a JWT for `Authorization: Bearer <token>`. After repeated
        failures an account or a client must wait (429, `Retry-After`).
        """
        extensions = current_app.extensions
        throttle, passwords = extensions["login_throttle"], extensions["passwords"]
        email = credentials["email"].lower()
        keys = [account_key(email), client_key(client_address())]
        state = throttle.check(keys)
        if state.retry_after:
            log.info("login throttled", extra={"email": email, "retry_after": state.retry_after})
            abort(429, message=f"Too many failed logins; try again in {state.retry_after} seconds.",
                  headers={"Retry-After": str(state.retry_after)})
        user = db.session.execute(
            sa.select(User.id, User.password_hash, User.role).where(User.email == email)).first()
        db.session.commit()  # no transaction or pooled connection held while hashing
        # An unknown user costs one hash check too, so timing does not tell who exists.
        if not passwords.verify(user.password_hash if user else None, credentials["password"]):
            throttle.record_failure(keys)
            db.session.commit()
            extensions["housekeeping"].run_if_due()
            log.info("login failed", extra={"email": email})
            abort(401, message=INVALID_CREDENTIALS, headers={"WWW-Authenticate": "Bearer"})
        if keys[0] in state.failed_keys:
            throttle.clear(keys[0])
        if passwords.needs_rehash(user.password_hash):
            db.session.execute(sa.update(User).where(User.id == user.id)
                               .values(password_hash=passwords.hash(credentials["password"])))
            log.info("password rehashed with the current parameters", extra={"email": email})
        db.session.commit()
        tokens = extensions["tokens"]
        body = {"token": tokens.issue(email, user.role), "expiresIn": tokens.ttl_seconds,
                "tokenType": "Bearer"}
        return body, 200, {"Cache-Control": "no-store"}


@blp.route("/validate")
class Validate(MethodView):
    @blp.doc(security=BEARER_AUTH)
    @blp.response(200, ClaimsSchema)
    @blp.alt_response(401, description="Missing, invalid, expired or revoked token")
    def get(self):
        """Validate a token

        The gateway asks this for every authenticated request: 200 with who
        the caller is, or 401.
        """
        return require_token()


@blp.route("/logout")
class Logout(MethodView):
    @blp.doc(security=BEARER_AUTH)
    @blp.response(204)
    @blp.alt_response(401, description="Missing, invalid, expired or already revoked token")
    def post(self):
        """Log out

        Revokes the token: from now on `/validate` refuses it.
        """
        claims = require_token()
        db.session.add(RevokedToken(jti=claims["jti"],
                                    expires_at=datetime.fromtimestamp(claims["exp"], timezone.utc)))
        try:
            db.session.commit()
        except IntegrityError:  # a concurrent logout of the same token got there first
            db.session.rollback()
        current_app.extensions["housekeeping"].run_if_due()
        log.info("logged out", extra={"email": claims["sub"]})
