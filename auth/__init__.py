"""Auth service: users, logins with argon2id password hashes, HS256 JWTs
that the gateway validates on every request, logout by token id, password
changes."""

from pathlib import Path

from flask import Flask

from pms_common.web_app import create_web_app

from .config import Config
from .extensions import api, db, migrate
from .housekeeping import Housekeeping
from .passwords import Passwords
from .resources import BLUEPRINTS
from .throttle import LoginThrottle
from .tokens import Tokens

MIGRATIONS_DIR = str(Path(__file__).with_name("migrations"))


def create_app(config: Config | None = None) -> Flask:
    config = config or Config()
    # Login needs no token: each endpoint that does says so itself.
    app = create_web_app(
        config,
        import_name=__name__,
        db=db,
        migrate=migrate,
        api=api,
        blueprints=BLUEPRINTS,
        gateway_prefix="/auth",
        every_operation_needs_a_token=False,
    )
    app.extensions["tokens"] = Tokens(config.signing_key(), config.JWT_TTL_SECONDS)
    app.extensions["passwords"] = Passwords(
        config.ARGON2_TIME_COST, config.ARGON2_MEMORY_KIB, config.ARGON2_PARALLELISM
    )
    app.extensions["login_throttle"] = LoginThrottle(
        config.LOGIN_MAX_FAILURES, config.LOGIN_MAX_FAILURES_PER_CLIENT, config.LOGIN_WINDOW_SECONDS
    )
    app.extensions["housekeeping"] = Housekeeping(config.LOGIN_WINDOW_SECONDS)
    return app
