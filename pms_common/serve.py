"""Start-up of an HTTP service: migrate, seed (dev), then serve with gunicorn.

gunicorn runs in the process that built the app and migrated its database,
and its workers fork from it: the app is imported once per service, not once
more in each worker (each import is 2 s of CPU on a slow 2-core machine, and
every service starts at once). The same command runs under `make run` and in a
container, so what a test starts is what production starts."""
import logging
import os
from pathlib import Path

from flask_migrate import upgrade
from gunicorn.app.base import Application

from .heap import freeze_start_up_objects
from .logs import configure_logging

log = logging.getLogger(__name__)
GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")


def migrate_and_seed(app, migrations_dir, seed=None):
    with app.app_context():
        upgrade(directory=str(migrations_dir))
        if seed is not None:
            seed(app)


class BuiltApp(Application):
    """gunicorn with our settings file, serving an app that is already built."""

    def __init__(self, app, bind):
        self.application, self.bind = app, bind
        super().__init__()

    def load_config(self):
        self.load_config_from_file(str(GUNICORN_CONF))
        self.cfg.set("bind", [self.bind])

    def load(self):
        return self.application


def run_web_service(config, create_app, migrations_dir, seed=None):
    configure_logging(config.SERVICE, config.LOG_LEVEL)
    config.ensure_data_dir()
    app = create_app(config)
    migrate_and_seed(app, migrations_dir, seed)
    # The workers fork from this process: no pooled connection may be shared
    # with them, so each opens its own.
    with app.app_context():
        for engine in app.extensions["sqlalchemy"].engines.values():
            engine.dispose()
    bind = f"{config.BIND_HOST}:{config.PORT}"
    log.info("starting gunicorn", extra={"bind": bind})
    os.environ["PMS_SERVICE"] = config.SERVICE
    # Frozen before the fork as well: a worker's collections then leave the
    # app's objects alone, so their pages stay shared with the master.
    freeze_start_up_objects()
    BuiltApp(app, bind).run()
