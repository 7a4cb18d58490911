"""`python -m patient.worker`: publishes the outbox, retries pending billing
accounts and the closing of accounts no patient has, and reconciles billing's
accounts with the patients, until SIGTERM. No loop gives up: while the
database, the broker or billing is away each waits with capped backoff
(pms_common.worker), says so once, and resumes when it is back."""

import logging
import threading
import time

from pms_common.serve import Background, loop_main
from pms_common.status import StatusFile, status_path
from pms_common.worker import run_until_stopped

from . import create_app
from .account_closures import AccountReconciler, close_recorded_accounts
from .billing_client import retry_pending_accounts
from .config import Config
from .extensions import db
from .outbox import STANDBY_RETRY_SECONDS, WOKEN_IDLE_WAIT_SECONDS, OutboxRelay

log = logging.getLogger(__name__)
BILLING_SWEEP_SECONDS = 1.0
# The sweep's pause after one that found nothing due. Accounts fall pending
# (and closures are recorded) only while billing is away or a create failed,
# and their retries back off to seconds anyway; an idle worker then asks its
# database every 10 s, not every second (two queries, about a millisecond).
BILLING_IDLE_SWEEP_SECONDS = 10.0
# A relay that writers cannot wake (a database in memory) doubles its pause
# up to this while there is nothing to publish, so an idle system does not
# query its outbox every few ms (bench/README.md); the first event after a
# quiet spell waits at most this long.
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


def in_clean_session(step):
    """The step, with the session rolled back after a failure, so that the
    next try starts on a fresh connection."""

    def attempt():
        try:
            return step()
        except Exception:
            db.session.rollback()
            raise

    return attempt


def status_file(app):
    """Where the loops say whether they work (pms_common.status); work() sets it."""
    return app.extensions.get("status_file") or StatusFile(None)


def relay_events(app, stop: threading.Event):
    config = app.config
    status = status_file(app)
    busy_pause = config["OUTBOX_POLL_SECONDS"]
    with app.app_context():
        relay = OutboxRelay(
            config["KAFKA_BOOTSTRAP_SERVERS"], config["EVENTS_TOPIC"], batch_size=config["OUTBOX_BATCH_SIZE"]
        )
        pause, role = busy_pause, None

        def publish_once():
            nonlocal pause, role
            # An idle wait (10 s) and then the broker's ack timeout (10 s)
            # would outlast STALE_SECONDS without a write: rewritten first, if due.
            status.alive()
            started_at = time.time()
            published = relay.publish_pending()
            now = "publishing" if relay.holds_lease else "standing by"
            if now != role:
                role = now
                log.info("outbox relay role changed", extra={"role": role})
            if not relay.holds_lease:
                # Another copy's relay publishes: idle means that its outbox is empty.
                status.beat(idle=relay.backlog() == 0, started_at=started_at)
                pause = busy_pause
                return STANDBY_RETRY_SECONDS
            status.beat(idle=published == 0, started_at=started_at)
            if published == 0 and relay.wakes_on_events:
                # Nothing to publish: wait for a writer to wake it, not a poll.
                relay.wait_for_events(WOKEN_IDLE_WAIT_SECONDS, stop)
                pause = busy_pause
                return 0
            pause = next_pause(pause, published, relay.batch_size, busy_pause)
            return pause

        log.info("outbox relay started; publishes while it holds the outbox lease")
        try:
            run_until_stopped(
                "outbox relay", in_clean_session(publish_once), stop, status.outage("outbox relay")
            )
        finally:
            relay.close()


def retry_billing(app, stop: threading.Event):
    """Opens pending accounts and closes the ones recorded for closing."""
    client, retry_max_seconds = app.extensions["billing_client"], app.config["BILLING_RETRY_MAX_SECONDS"]

    def sweep():
        _, accounts_due = retry_pending_accounts(client, retry_max_seconds)
        _, closures_due = close_recorded_accounts(client, retry_max_seconds)
        return BILLING_SWEEP_SECONDS if accounts_due or closures_due else BILLING_IDLE_SWEEP_SECONDS

    with app.app_context():
        run_until_stopped(
            "billing account retries",
            in_clean_session(sweep),
            stop,
            status_file(app).outage("billing account retries"),
        )


def reconcile_accounts(app, stop: threading.Event):
    config = app.config
    reconciler = AccountReconciler(
        app.extensions["billing_client"],
        config["ORPHAN_ACCOUNT_MIN_AGE_SECONDS"],
        config["RECONCILE_INTERVAL_SECONDS"],
    )
    with app.app_context():
        run_until_stopped(
            "billing account reconciliation",
            in_clean_session(reconciler.step),
            stop,
            status_file(app).outage("billing account reconciliation"),
        )


def run(app, stop: threading.Event):
    """Each loop in its own thread, so a slow billing never delays events
    (and the reverse)."""
    helpers = [
        threading.Thread(target=retry_billing, args=(app, stop), name="billing-retry"),
        threading.Thread(target=reconcile_accounts, args=(app, stop), name="billing-reconciliation"),
    ]
    for helper in helpers:
        helper.start()
    try:
        relay_events(app, stop)
    finally:
        stop.set()
        for helper in helpers:
            helper.join()
        log.info("worker stopped")


def work(config, app, stop: threading.Event):
    """The worker's loops on the built app until `stop` is set: in a process
    of its own or forked beside patient's web workers (pms_common.serve)."""
    app.extensions["status_file"] = StatusFile(status_path(config.DATA_DIR, WORKER.part, config.COPY))
    run(app, stop)


WORKER = Background("patient-worker", work, metrics_port_setting="WORKER_METRICS_PORT")


def main():
    loop_main(WORKER, Config, create_app)


if __name__ == "__main__":
    main()
