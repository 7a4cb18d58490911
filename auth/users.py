"""/users: create and list user accounts (ADMIN only, enforced at the gateway)."""
import logging

import sqlalchemy as sa
from flask import current_app, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy.exc import IntegrityError

from pms_common.pagination import page_of

from .extensions import db
from .login import BEARER_AUTH
from .models import User
from .schemas import UserCreateSchema, UserSchema

log = logging.getLogger(__name__)
blp = Blueprint("users", __name__, url_prefix="/users",
                description="User accounts (ADMIN only: the gateway checks the role).")

EMAIL_TAKEN = "A user with this email already exists."


def acting_user():
    """Who the gateway says is calling (from the token it validated)."""
    email = request.headers.get("X-User-Email")
    return email[:255] if email else None


@blp.route("")
class Users(MethodView):
    @blp.doc(security=BEARER_AUTH)
    @blp.response(200, UserSchema(many=True))
    @blp.paginate(page_size=100, max_page_size=1000)
    def get(self, pagination_parameters):
        """List users

        A bare JSON array, one page at a time (`page`, `page_size`), oldest
        first; the `X-Pagination` header has the totals. No secrets.
        """
        return page_of(db.session, sa.select(User).order_by(User.created_at, User.email),
                       pagination_parameters)

    @blp.doc(security=BEARER_AUTH)
    @blp.arguments(UserCreateSchema())
    @blp.response(201, UserSchema)
    @blp.alt_response(409, description="Another user has this email (compared case-insensitively)")
    def post(self, data):
        """Create a user

        The email is stored lower-cased. The password must be at least 12
        characters of at least two kinds and must not contain the email.
        """
        user = User(email=data["email"].lower(), role=data["role"], created_by=acting_user(),
                    password_hash=current_app.extensions["passwords"].hash(data["password"]))
        db.session.add(user)
        try:
            db.session.commit()
        except IntegrityError:  # the unique index on email decides, even between racing requests
            db.session.rollback()
            abort(409, message=EMAIL_TAKEN, errors={"json": {"email": [EMAIL_TAKEN]}})
        log.info("user created", extra={"user_id": str(user.id), "role": user.role,
                                        "by": user.created_by})
        return user, 201, {"Location": url_for("users.UserById", user_id=user.id)}


@blp.route("/<uuid:user_id>")
class UserById(MethodView):
    @blp.doc(security=BEARER_AUTH)
    @blp.response(200, UserSchema)
    @blp.alt_response(404, description="No such user")
    def get(self, user_id):
        """Get a user"""
        user = db.session.get(User, user_id)
        if user is None:
            abort(404, message=f"User {user_id} not found.")
        return user
