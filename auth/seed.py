"""Users present from the start (idempotent: an existing user is left as it is).

Dev mode seeds the Java original's fixture, testuser@test.com / password123
(ADMIN). That password breaks the strength rule for new users; it is exempt
because clients of the original log in with it. Production seeds nobody
unless ADMIN_EMAIL and ADMIN_PASSWORD are set (Config.check enforces the
rule on that password)."""
import logging

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import ADMIN, User

log = logging.getLogger(__name__)
DEV_USER_EMAIL, DEV_USER_PASSWORD = "testuser@test.com", "password123"


def seed_users(app):
    config = app.config
    wanted = []
    if config["ENV"] == "dev":
        wanted.append((DEV_USER_EMAIL, DEV_USER_PASSWORD))
    if config["ADMIN_EMAIL"]:
        wanted.append((config["ADMIN_EMAIL"].strip().lower(), config["ADMIN_PASSWORD"]))
    for email, password in wanted:
        ensure_admin(email, password)


def ensure_admin(email, password):
    if db.session.scalar(sa.select(User.id).where(User.email == email)) is not None:
        log.info("seed user already present", extra={"email": email})
        return False
    db.session.add(User(email=email, role=ADMIN, created_by="seed",
                        password_hash=current_app.extensions["passwords"].hash(password)))
    try:
        db.session.commit()
    except IntegrityError:  # another process seeded it meanwhile
        db.session.rollback()
        return False
    log.info("seeded admin user", extra={"email": email})
    return True
