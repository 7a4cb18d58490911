"""Patient service: patient records over REST, billing accounts over gRPC,
change events through a transactional outbox."""
from flask import Flask

from pms_common.db import check_database
from pms_common.web import api_spec_options, database_outage_is_503, health_blueprint, init_request_context

from .billing import BillingClient
from .config import Config
from .extensions import api, db, migrate
from .resources import blp

MIGRATIONS_DIR = __path__[0] + "/migrations"


def create_app(config=None):
    app = Flask(__name__)
    config = config or Config()
    config.ensure_data_dir()
    app.config.from_object(config)
    app.config["API_SPEC_OPTIONS"] = api_spec_options("/api")
    app.json.sort_keys = False
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    api.init_app(app)
    api.register_blueprint(blp)
    init_request_context(app)
    database_outage_is_503(app, db)
    app.register_blueprint(health_blueprint({"database": lambda: check_database(db.engine)}))
    app.extensions["billing_client"] = BillingClient(config.BILLING_ADDRESS,
                                                     config.BILLING_TIMEOUT_SECONDS)
    return app
