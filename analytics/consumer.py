"""`python -m analytics.consumer`: counts patient events exactly once.

The loop is the kit's (pms_common.consumer): batches as the settings shape
them, bad messages to the dead-letter topic, offsets stored only after a
batch's transaction committed, a lost database or broker waited for. Each
batch is counted in one transaction that also records every event id, so a
batch read again after a crash changes nothing. The heartbeat row is what the
API's readiness reads: it stops while the loop waits for a peer.

Several copies may run on one database: they share the topic's partitions as
one consumer group, and a copy that dies hands its partitions, from their last
committed offsets, to the others, which skip the ids it had already counted.
"""

import logging
import os
import socket
import time
from datetime import timedelta

from pms_common.consumer import ConsumerSettings, EventConsumer
from pms_common.models import utcnow
from pms_common.serve import Background, loop_main
from pms_common.status import StatusFile, status_path, waiting_for

from . import CONSUMER_PART, MIGRATIONS_DIR, create_app, store
from .config import Config
from .extensions import db

log = logging.getLogger(__name__)
FORGET_INTERVAL_SECONDS = 600.0  # between sweeps of event ids older than DEDUP_HOURS


class AnalyticsEventConsumer(EventConsumer):
    # What the launcher reads (pms_common.status); run() gives it a file.
    status_file = StatusFile(None)

    def __init__(self, config, engine, stop=None):
        self.config = config
        self.engine = engine
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        super().__init__(ConsumerSettings.of_part(config, f"analytics-{self.identity}"), stop)
        self._next_forget = 0.0

    def handle_batch(self, events):
        with self.engine.begin() as connection:
            counted = store.apply_events(connection, events)
        log.debug("batch counted", extra={"events": len(events), "counted": counted})

    def report_status(self, ready, problem):
        # The file first: it is written while the database is away.
        self.status_file.report("consuming patient events", waiting_for(self.outage))
        with self.engine.begin() as connection:
            store.write_heartbeat(connection, self.config.CONSUMER_GROUP, self.identity, error=problem)

    def maintain(self):
        """Deletes a chunk of event ids older than DEDUP_HOURS; a full chunk
        means more are due, so the next one follows after the next poll."""
        if time.monotonic() < self._next_forget:
            return
        self._next_forget = time.monotonic() + FORGET_INTERVAL_SECONDS  # a failed sweep waits for the next
        before = utcnow() - timedelta(hours=self.config.DEDUP_HOURS)
        with self.engine.begin() as connection:
            forgotten = store.forget_processed_events(connection, before)
        if forgotten:
            log.info("forgot the ids of old events", extra={"forgotten": forgotten})
        if forgotten >= store.FORGET_CHUNK:
            self._next_forget = 0.0


def work(config, app, stop):
    """Counts events on the built app (its database migrated) until `stop` is
    set: in a process of its own or forked beside analytics' web workers."""
    with app.app_context():
        consumer = AnalyticsEventConsumer(config, db.engine, stop)
        consumer.status_file = StatusFile(status_path(config.DATA_DIR, CONSUMER_PART, config.COPY))
        consumer.run()


CONSUMER = Background(CONSUMER_PART, work, metrics_port_setting="CONSUMER_METRICS_PORT")


def main():
    loop_main(CONSUMER, Config, create_app, MIGRATIONS_DIR)


if __name__ == "__main__":
    main()
