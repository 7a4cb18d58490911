"""Auth service: users, logins with argon2id password hashes, HS256 JWTs
that the gateway validates on every request, logout by token id."""
from flask import Flask

from pms_common.db import check_database
from pms_common.web import api_spec_options, database_outage_is_503, health_blueprint, init_request_context

from . import login, users
from .config import Config
from .extensions import api, db, migrate
from .housekeeping import Housekeeping
from .passwords import Passwords
from .throttle import LoginThrottle
from .tokens import Tokens

MIGRATIONS_DIR = __path__[0] + "/migrations"


def create_app(config=None):
    config = config or Config()
    config.check()
    signing_key = config.signing_key()
    config.ensure_data_dir()
    app = Flask(__name__)
    app.config.from_object(config)
    # Login needs no token: each endpoint that does says so itself.
    app.config["API_SPEC_OPTIONS"] = api_spec_options("/auth", secured=False)
    app.json.sort_keys = False
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    api.init_app(app)
    api.register_blueprint(login.blp)
    api.register_blueprint(users.blp)
    init_request_context(app)
    database_outage_is_503(app, db)
    app.register_blueprint(health_blueprint({"database": lambda: check_database(db.engine)}))
    app.extensions["tokens"] = Tokens(signing_key, config.JWT_TTL_SECONDS)
    app.extensions["passwords"] = Passwords(config.ARGON2_TIME_COST, config.ARGON2_MEMORY_KIB,
                                            config.ARGON2_PARALLELISM)
    app.extensions["login_throttle"] = LoginThrottle(config.LOGIN_MAX_FAILURES,
                                                     config.LOGIN_MAX_FAILURES_PER_CLIENT,
                                                     config.LOGIN_WINDOW_SECONDS)
    app.extensions["housekeeping"] = Housekeeping(config.LOGIN_WINDOW_SECONDS)
    return app
