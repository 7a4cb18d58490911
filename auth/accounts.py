"""What can be done to a user account, in one place for the HTTP API and the
operator's command line (`python -m auth users ...`): create, change role or
disabled, set a new password. Each runs in the app context and commits."""

import logging
import uuid

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from pms_common.identity import ADMIN, email_key

from .extensions import db
from .models import User
from .passwords import password_weakness

log = logging.getLogger(__name__)

EMAIL_TAKEN = "A user with this email already exists."
LAST_ADMIN = (
    "This would leave no enabled ADMIN: make another user ADMIN (or enable one) "
    "first, so that somebody can still manage the clinic's accounts."
)


class AccountRefused(Exception):
    """The change is refused; the message says why, `status` what HTTP answers."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def create_user(email, role, password, *, by, checked=False):
    """A new user; 409 if the email (as a key) is taken, 422 if the password
    is too weak (checked here unless the caller's schema already did)."""
    weakness = None if checked else password_weakness(password, email)
    if weakness:
        raise AccountRefused(422, weakness)
    user = User(
        email=email_key(email),
        role=role,
        created_by=by,
        password_hash=current_app.extensions["passwords"].hash(password),
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:  # the unique index on email decides, even between racing requests
        db.session.rollback()
        raise AccountRefused(409, EMAIL_TAKEN) from None
    log.info("user created", extra={"user_id": str(user.id), "role": user.role, "by": by})
    return user


def find_user(email_or_id):
    """The user with this id or email (compared as a key), else 404."""
    try:
        user = db.session.get(User, uuid.UUID(str(email_or_id)))
    except ValueError:
        user = db.session.scalar(sa.select(User).where(User.email == email_key(email_or_id)))
    if user is None:
        raise AccountRefused(404, f"User {email_or_id} not found.")
    return user


def change_user(user_id, changes, *, by):
    """Applies `changes` (role, disabled) and retires the user's tokens when
    anything changed; the last enabled ADMIN can be neither demoted nor
    disabled (409). Returns the user."""
    # Locks the user and every enabled ADMIN, in one order, so two admins
    # demoting each other at once cannot both pass the last-admin check.
    db.session.execute(
        sa.select(User.id)
        .where(sa.or_(User.id == user_id, sa.and_(User.role == ADMIN, User.disabled.is_(False))))
        .order_by(User.id)
        .with_for_update()
    )
    user = db.session.get(User, user_id, populate_existing=True)
    if user is None:
        db.session.rollback()
        raise AccountRefused(404, f"User {user_id} not found.")
    changed = {field: value for field, value in changes.items() if getattr(user, field) != value}
    if not changed:
        db.session.commit()
        return user
    update = (
        sa.update(User)
        .where(User.id == user_id)
        .values(**changed, token_generation=User.token_generation + 1, kept_jti=None)
    )
    if changed.get("role", ADMIN) != ADMIN or changed.get("disabled"):
        # Checked in the UPDATE itself, so it holds where FOR UPDATE is a no-op (SQLite).
        other = aliased(User)
        update = update.where(
            sa.or_(
                User.role != ADMIN,
                User.disabled.is_(True),
                sa.exists().where(other.role == ADMIN, other.disabled.is_(False), other.id != user_id),
            )
        )
    if db.session.execute(update).rowcount == 0:
        db.session.rollback()
        raise AccountRefused(409, LAST_ADMIN)
    db.session.commit()
    db.session.refresh(user)
    log.info("user changed", extra={"user_id": str(user_id), "by": by, "fields": sorted(changed), **changed})
    return user


def set_password(user, password, *, by, kept_jti=None, checked=False):
    """Stores a new password (which must be strong enough: checked here
    unless the caller already did) and retires every token of the user but
    `kept_jti` (the one that asked, if any)."""
    weakness = None if checked else password_weakness(password, user.email)
    if weakness:
        raise AccountRefused(422, weakness)
    db.session.execute(
        sa.update(User)
        .where(User.id == user.id)
        .values(
            password_hash=current_app.extensions["passwords"].hash(password),
            token_generation=User.token_generation + 1,
            kept_jti=kept_jti,
        )
    )
    db.session.commit()
    log.info("password set", extra={"user_id": str(user.id), "by": by})
