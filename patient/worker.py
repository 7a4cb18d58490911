"""`python -m patient.worker`: publishes the outbox and retries pending
billing accounts, until SIGTERM."""
import logging
import signal
import threading

from pms_common.logs import configure_logging

from . import create_app
from .billing import retry_pending_accounts
from .config import Config
from .outbox import OutboxRelay

log = logging.getLogger(__name__)
BILLING_SWEEP_SECONDS = 1.0


def relay_events(app, stop: threading.Event):
    config = app.config
    with app.app_context():
        relay = OutboxRelay(config["KAFKA_BOOTSTRAP_SERVERS"], config["EVENTS_TOPIC"],
                            batch_size=config["OUTBOX_BATCH_SIZE"])
        log.info("outbox relay started", extra={"backlog": relay.backlog()})
        try:
            while not stop.is_set():
                # A full batch means a backlog: go on at once. Otherwise pause,
                # so that under load a batch carries many events, not one.
                if relay.publish_pending() < relay.batch_size:
                    stop.wait(config["OUTBOX_POLL_SECONDS"])
        finally:
            relay.close()


def retry_billing(app, stop: threading.Event):
    with app.app_context():
        while not stop.is_set():
            retry_pending_accounts(app.extensions["billing_client"], app.config["BILLING_RETRY_MAX_SECONDS"])
            stop.wait(BILLING_SWEEP_SECONDS)


def run(app, stop: threading.Event):
    """Two loops, so a slow billing never delays events (and the reverse)."""
    billing = threading.Thread(target=retry_billing, args=(app, stop), name="billing-retry")
    billing.start()
    try:
        relay_events(app, stop)
    finally:
        stop.set()
        billing.join()
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
