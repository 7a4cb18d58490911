"""/login, /validate, /logout: issuing, checking and revoking tokens."""

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException

from pms_common import metrics
from pms_common.identity import bearer_token
from pms_common.web import ApiBlueprint

from ..extensions import db
from ..models import RevokedToken, User
from ..schemas import ClaimsSchema, LoginSchema, TokenSchema
from ..throttle import keys_or_429
from ..tokens import InvalidToken, account_refusal

log = logging.getLogger(__name__)
blp = ApiBlueprint("tokens", __name__, description="Log in, validate a token, log out.")

BEARER_AUTH = [{"bearerAuth": []}]
INVALID_CREDENTIALS = "Invalid email or password."
# A message, not a password (bandit B105 matches the name).
INVALID_TOKEN = "The token is missing, invalid, expired or revoked."  # nosec B105
# The outcomes pms_auth_logins_total counts.
SUCCESS, FAILURE, THROTTLED = "success", "failure", "throttled"


def logins():
    return metrics.counter("pms_auth_logins_total", "Logins by outcome", ("outcome",))


def tokens_revoked():
    return metrics.counter("pms_auth_tokens_revoked_total", "Tokens revoked by a logout")


def require_token():
    """The claims of the request's bearer token if its account still accepts
    it, or a 401 with a Bearer challenge."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        abort(401, message="A bearer token is required.", headers={"WWW-Authenticate": "Bearer"})
    try:
        claims = current_app.extensions["tokens"].decode(token)
        refusal = account_refusal(claims)
        if refusal:
            raise InvalidToken(refusal)
    except InvalidToken as exc:
        log.info("token refused", extra={"reason": str(exc)})
        abort(401, message=INVALID_TOKEN, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return claims


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema())
    @blp.response(200, TokenSchema)
    @blp.alt_response(
        401, description="Unknown email, wrong password or disabled user (the same answer for each)"
    )
    @blp.alt_response(429, description="Too many failed logins for this account or client; see `Retry-After`")
    def post(self, credentials):
        """Log in

        Returns a JWT for `Authorization: Bearer <token>`. After repeated
        failures an account or a client must wait (429, `Retry-After`).
        """
        extensions = current_app.extensions
        throttle, passwords = extensions["login_throttle"], extensions["passwords"]
        email = credentials["email"]  # already its key (LoginSchema)
        try:
            keys, state = keys_or_429(email, "login")
        except HTTPException:
            logins().labels(THROTTLED).inc()
            raise
        user = db.session.execute(
            sa.select(User.id, User.password_hash, User.role, User.disabled, User.token_generation).where(
                User.email == email
            )
        ).first()
        db.session.commit()  # no transaction or pooled connection held while hashing
        # An unknown or disabled user costs one hash check too, so timing does not tell.
        password_matches = passwords.verify(user.password_hash if user else None, credentials["password"])
        if not password_matches or user.disabled:
            throttle.record_failure(keys)
            db.session.commit()
            extensions["housekeeping"].run_if_due()
            reason = "user disabled" if password_matches else "bad credentials"
            log.info("login failed", extra={"email": email, "reason": reason})
            logins().labels(FAILURE).inc()
            abort(401, message=INVALID_CREDENTIALS, headers={"WWW-Authenticate": "Bearer"})
        if keys[0] in state.failed_keys:
            throttle.clear(keys[0])
        if passwords.needs_rehash(user.password_hash):
            db.session.execute(
                sa.update(User)
                .where(User.id == user.id)
                .values(password_hash=passwords.hash(credentials["password"]))
            )
            log.info("password rehashed with the current parameters", extra={"email": email})
        db.session.commit()
        tokens = extensions["tokens"]
        body = {
            "token": tokens.issue(email, user.role, user.token_generation),
            "expiresIn": tokens.ttl_seconds,
            "tokenType": "Bearer",
        }
        logins().labels(SUCCESS).inc()
        return body, 200, {"Cache-Control": "no-store"}


@blp.route("/validate")
class Validate(MethodView):
    @blp.doc(security=BEARER_AUTH)
    @blp.response(200, ClaimsSchema)
    @blp.alt_response(401, description="Missing, invalid, expired or revoked token")
    def get(self):
        """Validate a token

        The gateway asks this for every authenticated request: 200 with who
        the caller is, or 401. The token's user must still exist, be enabled
        and have the token's role, and the token must not predate the user's
        last password change (except the token that made it).
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
        db.session.add(RevokedToken(jti=claims["jti"], expires_at=datetime.fromtimestamp(claims["exp"], UTC)))
        try:
            db.session.commit()
        except IntegrityError:  # a concurrent logout of the same token got there first
            db.session.rollback()
        else:
            tokens_revoked().inc()
        current_app.extensions["housekeeping"].run_if_due()
        log.info("logged out", extra={"email": claims["sub"]})
