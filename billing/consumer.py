"""Patient events from Kafka: a deleted patient's account is closed.

The loop is the kit's (pms_common.consumer): a message that is not a valid
PatientEvent goes to the dead-letter topic, offsets are stored once a batch's
closes are committed, and a database or broker that is away is waited for.
Each close commits by itself and a repeated close changes nothing, so a batch
read again after a crash or a failure is harmless, and so is one that another
copy of billing (the same consumer group) takes over from a copy that died."""

import logging
import uuid

from pms_common.consumer import ConsumerSettings, EventConsumer
from pms_common.events import DELETED

log = logging.getLogger(__name__)


def consumer_settings(config):
    """Billing's consumer settings, from its Config."""
    return ConsumerSettings(
        bootstrap_servers=config.KAFKA_BOOTSTRAP_SERVERS,
        group_id=config.EVENTS_GROUP_ID,
        topic=config.EVENTS_TOPIC,
        fetch_wait_ms=config.EVENTS_FETCH_WAIT_MS,
    )


class BillingEventConsumer(EventConsumer):
    def __init__(self, store, settings, stop=None):
        super().__init__(settings, stop)
        self.store = store

    def handle_batch(self, events):
        for event in events:
            if event.event_type != DELETED:
                continue
            account = self.store.close_account(uuid.UUID(event.patient_id))
            log.info(
                "patient deleted: account closed"
                if account
                else "patient deleted: no billing account to close",
                extra={
                    "patient_id": event.patient_id,
                    "event_id": event.event_id,
                    "account_id": account.account_id if account else None,
                },
            )
