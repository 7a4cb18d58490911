"""`python -m billing`: migrate, serve gRPC, consume patient events, drain on SIGTERM;
`python -m billing migrate`: migrate only."""

import logging
from functools import partial

from pms_common.child import run_in_child
from pms_common.db import instrument_engines
from pms_common.entry import Migrate, run_command
from pms_common.freeze import freeze_start_up_objects
from pms_common.metrics import start_part_metrics
from pms_common.telemetry import start_tracing, stop_tracing
from pms_common.worker import retry_until_done, stop_on_signals

from . import create_server, readiness_probe
from .config import Config
from .consumer import BillingEventConsumer, consumer_settings
from .store import Store

log = logging.getLogger(__name__)


def serve(config):
    config.ensure_data_dir()
    start_part_metrics(config.DATA_DIR, "billing", config.BIND_HOST, config.METRICS_PORT, config.COPY)
    start_tracing("billing")
    store = Store(config.DATABASE_URL)
    instrument_engines([store.engine])
    consumer = None
    try:
        # A database that is away at start is waited for, like one lost later;
        # the migration runs in a child, which alone imports alembic.
        migrate_in_child = partial(run_in_child, store.migrate)
        stop = stop_on_signals()
        if not retry_until_done("billing migrations", migrate_in_child, stop):
            return
        _server, _port, frame = create_server(config, f"{config.BIND_HOST}:{config.PORT}", store=store)
        frame.start()
        freeze_start_up_objects()
        log.info("serving", extra={"port": frame.port, "events": config.EVENTS_ENABLED})
        if config.EVENTS_ENABLED:
            consumer = BillingEventConsumer(store, consumer_settings(config)).start()
        # SERVING from the probe's first answer on, and NOT_SERVING whenever the store is away.
        frame.follow(readiness_probe(store, consumer))
        frame.serve_until_signalled(config.SHUTDOWN_GRACE_SECONDS, stop)
    finally:
        if consumer is not None:
            consumer.stop()
        store.dispose()
        stop_tracing()


def migrate(config):
    config.ensure_data_dir()
    store = Store(config.DATABASE_URL)
    try:
        store.migrate()
    finally:
        store.dispose()


def main(argv=None):
    run_command("billing", Config, serve, {"migrate": Migrate(migrate)}, argv)


if __name__ == "__main__":
    main()
