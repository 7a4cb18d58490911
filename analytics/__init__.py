"""Analytics: a Kafka consumer that counts patient events exactly once, and a
read-only API over the figures. Both share this package's models and store."""
from pathlib import Path

from flask import Flask, current_app

from pms_common.db import check_database
from pms_common.web import api_spec_options, database_outage_is_503, health_blueprint, init_request_context

from . import store
from .config import Config
from .extensions import api, db, migrate

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def create_app(config=None):
    config = config or Config()
    app = Flask(__name__)
    app.config.from_object(config)
    app.config["API_SPEC_OPTIONS"] = api_spec_options("/api")
    init_request_context(app)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    api.init_app(app)

    from .resources import blp
    api.register_blueprint(blp)
    app.register_blueprint(health_blueprint({
        "database": lambda: check_database(db.engine),
        "consumer": _check_consumer,
    }))

    database_outage_is_503(app, db)
    return app


def _check_consumer():
    with db.engine.connect() as connection:
        store.check_consumer_alive(connection, current_app.config["CONSUMER_GROUP"],
                                   current_app.config["CONSUMER_STALE_SECONDS"])
