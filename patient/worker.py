"""`python -m patient.worker`: publishes the outbox and retries pending
billing accounts, until SIGTERM."""
import logging
import signal
import threading

from pms_common.heap import freeze_start_up_objects
from pms_common.logs import configure_logging

from . import create_app
from .billing import retry_pending_accounts
from .config import Config
from .outbox import OutboxRelay

log = logging.getLogger(__name__)
BILLING_SWEEP_SECONDS = 1.0
# While there is nothing to publish the relay's pause doubles up to this, so an
# idle system does not query its outbox every few ms (5 % of a core); the first
# event after a quiet spell waits at most this long.
IDLE_PAUSE_MAX_SECONDS = 0.25


def next_pause(pause, published, batch_size, busy_pause):
    """The relay's pause before its next batch: none after a full batch (a
    backlog), the short one after some events, so that under load a batch
    carries many events, not one; doubling while there were none."""
    if published >= batch_size:
        return 0.0
    if published:
        return busy_pause
    return min(max(pause, busy_pause) * 2, max(IDLE_PAUSE_MAX_SECONDS, busy_pause))


def relay_events(app, stop: threading.Event):
    config = app.config
    with app.app_context():
        relay = OutboxRelay(config["KAFKA_BOOTSTRAP_SERVERS"], config["EVENTS_TOPIC"],
                            batch_size=config["OUTBOX_BATCH_SIZE"])
        log.info("outbox relay started", extra={"backlog": relay.backlog()})
        pause = config["OUTBOX_POLL_SECONDS"]
        try:
            while not stop.is_set():
                pause = next_pause(pause, relay.publish_pending(), relay.batch_size, config["OUTBOX_POLL_SECONDS"])
                if pause:
                    stop.wait(pause)
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
    app = create_app(config)
    freeze_start_up_objects()
    run(app, stop)


if __name__ == "__main__":
    main()
