"""Analytics: a Kafka consumer that counts patient events exactly once, and a
read-only API over the figures. Both share this package's models and store."""

from pathlib import Path

from flask import Flask, current_app

from pms_common.metrics import metrics_dir
from pms_common.web_app import create_web_app

from . import store
from .config import Config
from .extensions import api, db, migrate
from .resources import blp

MIGRATIONS_DIR = str(Path(__file__).with_name("migrations"))
CONSUMER_PART = "analytics-consumer"


def create_app(config: Config | None = None) -> Flask:
    config = config or Config()
    return create_web_app(
        config,
        import_name=__name__,
        db=db,
        migrate=migrate,
        api=api,
        blueprints=[blp],
        gateway_prefix="/api",
        health_checks={"consumer": _check_consumer},
        # The lag of the consumer beside this part (of the same copy number,
        # when several run; each consumer also serves its own on its metrics port).
        metrics_folders=[metrics_dir(config.DATA_DIR, CONSUMER_PART, config.COPY)],
    )


def _check_consumer() -> None:
    with db.engine.connect() as connection:
        store.check_consumer_alive(
            connection, current_app.config["CONSUMER_GROUP"], current_app.config["CONSUMER_STALE_SECONDS"]
        )
