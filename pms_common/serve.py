"""Start-up of an HTTP service: migrate, seed (dev), then exec gunicorn.

The same command runs under `make run` and in a container, so what a test
starts is what production starts."""
import logging
import os
import sys
from pathlib import Path

from flask_migrate import upgrade

from .logs import configure_logging

log = logging.getLogger(__name__)
GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")


def migrate_and_seed(app, migrations_dir, seed=None):
    with app.app_context():
        upgrade(directory=str(migrations_dir))
        if seed is not None:
            seed(app)


def run_web_service(config, create_app, wsgi_target, migrations_dir, seed=None):
    configure_logging(config.SERVICE, config.LOG_LEVEL)
    config.ensure_data_dir()
    app = create_app(config)
    migrate_and_seed(app, migrations_dir, seed)
    log.info("starting gunicorn", extra={"bind": f"{config.BIND_HOST}:{config.PORT}"})
    os.environ["PMS_SERVICE"] = config.SERVICE
    args = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF),
            "--bind", f"{config.BIND_HOST}:{config.PORT}", wsgi_target]
    os.execv(sys.executable, args)
