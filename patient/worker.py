"""`python -m patient.worker`: publishes the outbox and retries pending
billing accounts, until SIGTERM."""
import logging
import signal
import threading
import time

from pms_common.logs import configure_logging

from . import create_app
from .billing import retry_pending_accounts
from .config import Config
from .outbox import OutboxRelay

log = logging.getLogger(__name__)
BILLING_SWEEP_SECONDS = 1.0


def run(app, stop: threading.Event):
    config = app.config
    with app.app_context():
        relay = OutboxRelay(config["KAFKA_BOOTSTRAP_SERVERS"], config["EVENTS_TOPIC"],
                            batch_size=config["OUTBOX_BATCH_SIZE"])
        billing_client = app.extensions["billing_client"]
        next_billing_sweep = 0.0
        log.info("worker started", extra={"backlog": relay.backlog()})
        try:
            while not stop.is_set():
                published = relay.publish_pending()
                if time.monotonic() >= next_billing_sweep:
                    retry_pending_accounts(billing_client, config["BILLING_RETRY_MAX_SECONDS"])
                    next_billing_sweep = time.monotonic() + BILLING_SWEEP_SECONDS
                if not published:
                    stop.wait(config["OUTBOX_POLL_SECONDS"])
        finally:
            relay.close()
            log.info("worker stopped")


def main():
    config = Config()
    configure_logging("patient-worker", config.LOG_LEVEL)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run(create_app(config), stop)


if __name__ == "__main__":
    main()
