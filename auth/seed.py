"""Users present from the start (idempotent: an existing user is left as it is).

Dev mode seeds the Java original's fixture, an ADMIN whose email and password
are pms_common.config's DEV_USER_EMAIL and DEV_USER_PASSWORD. That password
breaks the strength rule for new users; it is exempt because clients of the
original log in with it. Production seeds nobody unless ADMIN_EMAIL and
ADMIN_PASSWORD are set (Config.check enforces the rule on that password)."""

import logging

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from pms_common.config import DEV_USER_EMAIL, DEV_USER_PASSWORD
from pms_common.identity import ADMIN, email_key

from .extensions import db
from .models import User

log = logging.getLogger(__name__)


def seed_users(app):
    config = app.config
    wanted = []
    if config["ENV"] == "dev":
        wanted.append((DEV_USER_EMAIL, DEV_USER_PASSWORD))
    if config["ADMIN_EMAIL"]:
        wanted.append((email_key(config["ADMIN_EMAIL"].strip()), config["ADMIN_PASSWORD"]))
    for email, password in wanted:
        ensure_admin(email, password)


def ensure_admin(email, password):
    if db.session.scalar(sa.select(User.id).where(User.email == email)) is not None:
        log.info("seed user already present", extra={"email": email})
        return False
    db.session.add(
        User(
            email=email,
            role=ADMIN,
            created_by="seed",
            password_hash=current_app.extensions["passwords"].hash(password),
        )
    )
    try:
        db.session.commit()
    except IntegrityError:  # another process seeded it meanwhile
        db.session.rollback()
        return False
    log.info("seeded admin user", extra={"email": email})
    return True
