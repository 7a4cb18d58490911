"""/users: create, list, read and change user accounts (ADMIN only, checked
here from the gateway's identity headers as well as at the gateway)."""

import logging

import sqlalchemy as sa
from flask import request
from flask.views import MethodView
from flask_smorest import abort

from pms_common.identity import ADMIN, USER_HEADER, require_role
from pms_common.pagination import page_of
from pms_common.web import ApiBlueprint
from pms_common.web_app import gateway_location

from ..accounts import AccountRefused, change_user, create_user
from ..extensions import db
from ..models import User
from ..schemas import UserCreateSchema, UserPatchSchema, UserSchema
from .login import BEARER_AUTH

log = logging.getLogger(__name__)
blp = ApiBlueprint("users", __name__, url_prefix="/users", description="User accounts (ADMIN only).")


def acting_user():
    """Who the gateway says is calling (from the token it validated)."""
    email = request.headers.get(USER_HEADER)
    return email[:255] if email else None


def admin_only(view):
    """Documents the answers `require_role(ADMIN)` gives."""
    view = blp.alt_response(403, description="The caller's role is not ADMIN")(view)
    return blp.alt_response(401, description="No caller identity from the gateway")(view)


@blp.route("")
class Users(MethodView):
    decorators = [require_role(ADMIN)]

    @blp.doc(security=BEARER_AUTH)
    @blp.response(200, UserSchema(many=True))
    @blp.paginate(page_size=100, max_page_size=1000)
    @admin_only
    def get(self, pagination_parameters):
        """List users

        A bare JSON array, one page at a time (`page`, `page_size`), oldest
        first; the `X-Pagination` header has the totals. No secrets.
        """
        return page_of(
            db.session, sa.select(User).order_by(User.created_at, User.email), pagination_parameters
        )

    @blp.doc(security=BEARER_AUTH)
    @blp.arguments(UserCreateSchema())
    @blp.response(201, UserSchema)
    @blp.alt_response(
        409, description="Another user has this email (compared NFKC-normalised and case-folded)"
    )
    @admin_only
    def post(self, data):
        """Create a user

        The email is stored NFKC-normalised and case-folded. The password must
        be at least 12 characters and not easy to guess (zxcvbn, which also
        knows the email); a passphrase of a few uncommon words works well.
        """
        try:
            user = create_user(data["email"], data["role"], data["password"], by=acting_user(), checked=True)
        except AccountRefused as refused:
            abort(refused.status, message=refused.message, errors={"json": {"email": [refused.message]}})
        return user, 201, {"Location": gateway_location("users.UserById", user_id=user.id)}


@blp.route("/<uuid:user_id>")
class UserById(MethodView):
    decorators = [require_role(ADMIN)]

    @blp.doc(security=BEARER_AUTH)
    @blp.response(200, UserSchema)
    @blp.alt_response(404, description="No such user")
    @admin_only
    def get(self, user_id):
        """Get a user"""
        user = db.session.get(User, user_id)
        if user is None:
            abort(404, message=f"User {user_id} not found.")
        return user

    @blp.doc(security=BEARER_AUTH)
    @blp.arguments(UserPatchSchema())
    @blp.response(200, UserSchema)
    @blp.alt_response(404, description="No such user")
    @blp.alt_response(409, description="The change would leave no enabled ADMIN")
    @admin_only
    def patch(self, changes, user_id):
        """Change a user's role or disable them

        A change of role or of `disabled` refuses every token the user holds
        from then on (they log in again, if they still may). The last enabled
        ADMIN can be neither demoted nor disabled.
        """
        try:
            return change_user(user_id, changes, by=acting_user())
        except AccountRefused as refused:
            abort(refused.status, message=refused.message)
