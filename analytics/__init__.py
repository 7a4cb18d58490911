"""Analytics: a Kafka consumer that counts patient events exactly once, and a
read-only API over the figures. Both share this package's models and store."""
from pathlib import Path

from flask import Flask, current_app, jsonify
from sqlalchemy.exc import OperationalError

from pms_common.db import check_database, engine_options
from pms_common.web import error_body, health_blueprint, init_request_context

from . import store
from .config import Config
from .extensions import api, db, migrate

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def create_app(config=None):
    config = config or Config()
    app = Flask(__name__)
    app.config.from_object(config)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=config.DATABASE_URL,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(config.DATABASE_URL),
        API_TITLE="Analytics API",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "servers": [{"url": "/api", "description": "through the gateway"}],
            "security": [{"bearerAuth": []}],
            "components": {"securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        },
    )
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

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc):
        app.logger.error("database unavailable: %s", exc)
        db.session.rollback()
        return jsonify(error_body(503, "The database is unavailable; try again shortly.")), 503

    return app


def _check_consumer():
    with db.engine.connect() as connection:
        store.check_consumer_alive(connection, current_app.config["CONSUMER_GROUP"],
                                   current_app.config["CONSUMER_STALE_SECONDS"])
