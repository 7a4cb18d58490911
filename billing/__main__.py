"""python -m billing: migrate, serve gRPC, consume patient events, drain on SIGTERM."""
import logging
import sys

from pms_common.config import ConfigError
from pms_common.grpc_server import serve_until_signalled
from pms_common.heap import freeze_start_up_objects
from pms_common.logs import configure_logging

from . import SERVICE_NAMES, create_server, set_ready
from .config import Config
from .events import PatientEventConsumer
from .store import Store

log = logging.getLogger("billing")


def main():
    try:
        config = Config()
    except ConfigError as exc:
        sys.exit(f"billing: {exc}")
    configure_logging(config.SERVICE, config.LOG_LEVEL)
    config.ensure_data_dir()
    store = Store(config.DATABASE_URL)
    consumer = None
    try:
        store.migrate()
        address = f"{config.BIND_HOST}:{config.PORT}"
        server, _port, health = create_server(config, address, store=store)
        server.start()
        set_ready(health, store)
        freeze_start_up_objects()
        log.info("serving", extra={"address": address, "events": config.EVENTS_ENABLED})
        if config.EVENTS_ENABLED:
            consumer = PatientEventConsumer(store, config.KAFKA_BOOTSTRAP_SERVERS,
                                            config.EVENTS_GROUP_ID, config.EVENTS_TOPIC).start()
        serve_until_signalled(server, health, SERVICE_NAMES, config.SHUTDOWN_GRACE_SECONDS)
    finally:
        if consumer is not None:
            consumer.stop()
        store.dispose()


if __name__ == "__main__":
    main()
