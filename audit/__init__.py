"""Audit: the trail of who saw or changed which patient record. A Kafka
consumer appends the patient changes from their events (audit.consumer), a
collector appends what the gateway's audit log says of every other request
(audit.collector), and a read-only API serves and verifies the trail."""

from pathlib import Path

from flask import Flask

from pms_common.web_app import create_web_app

from .config import Config
from .extensions import api, db, migrate
from .resources import blp

MIGRATIONS_DIR = str(Path(__file__).with_name("migrations"))


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
    )
