"""Patient service: patient records over REST, billing accounts over gRPC,
change events through a transactional outbox."""

from pathlib import Path

from flask import Flask

from pms_common.web_app import create_web_app

from .billing_client import BillingClient
from .config import Config
from .extensions import api, db, migrate
from .fhir import blp as fhir_blp
from .metrics import OutboxBacklogCollector
from .resources import blp

MIGRATIONS_DIR = str(Path(__file__).with_name("migrations"))


def create_app(config: Config | None = None) -> Flask:
    config = config or Config()
    app = create_web_app(
        config,
        import_name=__name__,
        db=db,
        migrate=migrate,
        api=api,
        blueprints=[blp, fhir_blp],
        gateway_prefix="/api",
        metrics_collectors=[OutboxBacklogCollector(db)],
    )
    app.extensions["billing_client"] = BillingClient(config.BILLING_ADDRESS, config.BILLING_TIMEOUT_SECONDS)
    return app
