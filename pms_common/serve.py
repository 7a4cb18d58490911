"""Start-up of an HTTP service: data folder, migrations, seed (dev), then gunicorn.

A new HTTP part's `__main__` is
`run_main(SERVICE, Config, partial(run_web_service, create_app=..., migrations_dir=...))`.

gunicorn runs in the process that built the app and migrated its database,
and its workers fork from it: the app is imported once per service, not once
more in each worker, which keeps the start of a whole system on a small
machine short (see bench/README.md, "Service kit figures"). The same command
runs under `make run` and in a container, so what a test starts is what
production starts.

A database that is away at start is waited for (like one lost later) before
the port is opened. Workers die with their master, and a master started in
place of a killed one takes the port over without refusing a connection
(pms_common.listener)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from flask_migrate import upgrade
from gunicorn.app.base import Application
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker
from sqlalchemy.exc import SQLAlchemyError

from .config import WebConfig, prepare_data_dir
from .freeze import freeze_start_up_objects
from .lifeline import die_with_parent
from .listener import bind_shared, hand_over, keep_sockets
from .logs import configure_logging, gunicorn_logconfig
from .metrics import metrics_dir, use_multiprocess
from .telemetry import start_tracing
from .worker import Outage, stop_on_signals

log = logging.getLogger(__name__)
GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")
Seed = Callable[[Flask], object]


def migrate_and_seed(app: Flask, migrations_dir: str | Path, seed: Seed | None = None) -> None:
    """Makes the data folder and a SQLite file private before the database
    is written, applies the migrations, then seeds (when given)."""
    prepare_data_dir(app.config["DATA_DIR"], app.config["SQLALCHEMY_DATABASE_URI"])
    with app.app_context():
        upgrade(directory=str(migrations_dir))
        if seed is not None:
            seed(app)


def migrate_when_database_answers(
    app: Flask, migrations_dir: str | Path, seed: Seed | None, stop: threading.Event
) -> bool:
    """migrate_and_seed, tried again with backoff while the database is away
    (any other error is raised); False if stopped first."""
    outage = Outage(f"{app.name} migrations")
    while not stop.is_set():
        try:
            migrate_and_seed(app, migrations_dir, seed)
        except SQLAlchemyError as error:
            stop.wait(outage.failed(error))
            continue
        outage.recovered()
        return True
    return False


def gunicorn_settings(config: WebConfig) -> dict[str, Any]:
    """What gunicorn takes from the service's config, on top of gunicorn_conf.py."""

    def post_fork(server: Arbiter, worker: Worker) -> None:
        die_with_parent()
        keep_sockets(worker.sockets)
        configure_logging(config.SERVICE, config.LOG_LEVEL)
        start_tracing(config.SERVICE)  # per worker: the exporter's thread and channel do not survive a fork

    def worker_exit(server: Arbiter, worker: Worker) -> None:
        hand_over(master_alive=os.getppid() == worker.ppid)

    return {
        "bind": [f"{config.BIND_HOST}:{config.PORT}"],
        "workers": config.WEB_CONCURRENCY,
        "threads": config.WEB_THREADS,
        "loglevel": config.LOG_LEVEL.lower(),
        "logconfig_dict": gunicorn_logconfig(config.SERVICE, config.LOG_LEVEL),
        "post_fork": post_fork,
        "worker_exit": worker_exit,
    }


class BuiltApp(Application):
    """gunicorn with our settings, serving an app that is already built."""

    def __init__(self, app: Flask, settings: dict[str, Any]) -> None:
        self.application, self.settings = app, settings
        super().__init__()

    def load_config(self) -> None:
        self.load_config_from_file(str(GUNICORN_CONF))
        for name, value in self.settings.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        return self.application


def run_web_service(
    config: WebConfig,
    create_app: Callable[[WebConfig], Flask],
    migrations_dir: str | Path,
    seed: Seed | None = None,
) -> None:
    """Builds the app, migrates and seeds its database (waiting for it while
    it is away), and serves it with gunicorn until stopped. Its workers'
    metrics go to the service's folder, emptied first (pms_common.metrics)."""
    use_multiprocess(metrics_dir(config.DATA_DIR, config.SERVICE, config.COPY))
    app = create_app(config)
    if not migrate_when_database_answers(app, migrations_dir, seed, stop_on_signals()):
        return
    # The workers fork from this process: no pooled connection may be shared
    # with them, so each opens its own.
    with app.app_context():
        for engine in app.extensions["sqlalchemy"].engines.values():
            engine.dispose()
    server = BuiltApp(app, gunicorn_settings(config))
    listener = bind_shared(config.BIND_HOST, config.PORT, server.cfg.backlog)
    # Served from the socket bound here; gunicorn owns its descriptor from now on.
    server.cfg.set("bind", [f"fd://{listener.detach()}"])
    log.info("starting gunicorn", extra={"bind": f"{config.BIND_HOST}:{config.PORT}"})
    # Frozen before the fork as well: a worker's collections then leave the
    # app's objects alone, so their pages stay shared with the master.
    freeze_start_up_objects()
    server.run()
