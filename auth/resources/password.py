"""/password: a user changes their own password."""

import functools
import logging

import sqlalchemy as sa
from flask import current_app
from flask.views import MethodView
from flask_smorest import abort

from pms_common.web import ApiBlueprint

from ..accounts import find_user, set_password
from ..extensions import db
from ..models import User
from ..passwords import password_weakness
from ..schemas import PasswordChangeSchema
from ..throttle import keys_or_429
from .login import BEARER_AUTH, require_token

log = logging.getLogger(__name__)
blp = ApiBlueprint("password", __name__, description="Change your own password.")

# A message, not a password (bandit B105 matches the name).
WRONG_CURRENT_PASSWORD = "The current password is wrong."  # nosec B105


def with_token(view):
    """Checks the bearer token before the body is read, and passes its claims on."""

    @functools.wraps(view)
    def checked(*args, **kwargs):
        return view(*args, claims=require_token(), **kwargs)

    return checked


@blp.route("/password")
class Password(MethodView):
    @blp.doc(security=BEARER_AUTH)
    @with_token
    @blp.arguments(PasswordChangeSchema())
    @blp.response(204)
    @blp.alt_response(
        401, description="Missing or invalid token, or wrong current password (counted as a failed login)"
    )
    @blp.alt_response(
        422,
        description="An invalid body, or a new password that is too weak "
        "(`errors.json.newPassword` says why)",
    )
    @blp.alt_response(429, description="Too many failed logins for this account or client; see `Retry-After`")
    def post(self, change, claims):
        """Change my password

        Needs the current password. Every other token of this user issued
        before the change is refused from then on; the token sent with this
        request keeps working until it expires or logs out.
        """
        extensions = current_app.extensions
        throttle, passwords = extensions["login_throttle"], extensions["passwords"]
        email = claims["sub"]
        weakness = password_weakness(change["newPassword"], email)
        if change["newPassword"] == change["currentPassword"]:
            weakness = "Must differ from the current password."
        if weakness:
            abort(422, message=weakness, errors={"json": {"newPassword": [weakness]}})
        keys, state = keys_or_429(email, "password change")
        user = db.session.execute(sa.select(User.id, User.password_hash).where(User.email == email)).first()
        db.session.commit()  # no transaction or pooled connection held while hashing
        if user is None or not passwords.verify(user.password_hash, change["currentPassword"]):
            throttle.record_failure(keys)
            db.session.commit()
            log.info("password change refused: wrong current password", extra={"email": email})
            abort(
                401,
                message=WRONG_CURRENT_PASSWORD,
                errors={"json": {"currentPassword": [WRONG_CURRENT_PASSWORD]}},
            )
        if keys[0] in state.failed_keys:
            throttle.clear(keys[0])
        db.session.commit()
        set_password(
            find_user(user.id), change["newPassword"], by=email, kept_jti=claims["jti"], checked=True
        )
        log.info("password changed", extra={"user_id": str(user.id), "email": email})
