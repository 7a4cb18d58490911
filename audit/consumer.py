"""`python -m audit.consumer`: appends an entry for every patient change,
from the change's event (written in the change's own transaction by
patient's outbox), exactly once per event id.

The loop is the kit's (pms_common.consumer): offsets are stored only after a
batch's entries committed, an outage of the database or broker is waited
out, so an audit store that is down delays entries and loses none."""

import logging
import os
import socket

from pms_common.consumer import ConsumerSettings, EventConsumer
from pms_common.events import CREATED, DELETED, UPDATED
from pms_common.serve import Background, loop_main
from pms_common.status import StatusFile, status_path, waiting_for

from . import MIGRATIONS_DIR, create_app
from .config import Config
from .extensions import db
from .store import NewEntry, append_entries

log = logging.getLogger(__name__)
# Event type -> the action, and the status the client got for that change.
ACTION_OF_EVENT = {CREATED: ("CREATE", 201), UPDATED: ("UPDATE", 200), DELETED: ("DELETE", 204)}


def entry_of_event(event) -> NewEntry:
    """The audit entry of a change; an event without an audit context (the
    dev seed, or written before events carried one) has no actor."""
    action, status = ACTION_OF_EVENT[event.event_type]
    context = event.audit
    return NewEntry(
        time=event.occurred_at,
        action=action,
        source=f"event:{event.event_id}",
        patient_id=event.patient_id,
        actor=context.actor_email if context else None,
        actor_role=context.actor_role if context else None,
        request_id=context.request_id if context else None,
        status=status if context else None,
        client_address=context.client_address if context else None,
        fields=context.changed_fields if context else None,
    )


class AuditEventConsumer(EventConsumer):
    # What the launcher reads (pms_common.status); run() gives it a file.
    status_file = StatusFile(None)

    def __init__(self, config, engine, stop=None):
        self.config = config
        self.engine = engine
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        super().__init__(ConsumerSettings.of_part(config, f"audit-{self.identity}"), stop)

    def handle_batch(self, events):
        with self.engine.begin() as connection:
            appended = append_entries(connection, [entry_of_event(event) for event in events])
        log.debug("batch audited", extra={"events": len(events), "appended": appended})

    def report_status(self, ready, problem):
        self.status_file.report("auditing patient events", waiting_for(self.outage))


def work(config, app, stop):
    """Audits events on the built app (its database migrated) until `stop` is
    set: in a process of its own or forked beside audit's web workers."""
    with app.app_context():
        consumer = AuditEventConsumer(config, db.engine, stop)
        consumer.status_file = StatusFile(status_path(config.DATA_DIR, CONSUMER.part))
        consumer.run()


CONSUMER = Background("audit-consumer", work)


def main():
    loop_main(CONSUMER, Config, create_app, MIGRATIONS_DIR)


if __name__ == "__main__":
    main()
