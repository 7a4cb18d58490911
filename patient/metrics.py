"""The outbox's figures on patient's /metrics, read from the database at
each scrape: how many events wait to be published and how old the oldest is."""

import logging

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.exc import SQLAlchemyError

from pms_common.db_errors import db_error_fields
from pms_common.metrics import Collector
from pms_common.models import utcnow

from .models import OutboxEvent

log = logging.getLogger(__name__)
# One pass over the partial index of unpublished rows (ix_outbox_unpublished).
_BACKLOG = sa.select(sa.func.count(), sa.func.min(OutboxEvent.created_at)).where(
    OutboxEvent.published_at.is_(None)
)


class OutboxBacklogCollector(Collector):
    """pms_outbox_backlog_events and pms_outbox_oldest_unsent_age_seconds;
    nothing while the database does not answer (the scrape itself still works)."""

    def __init__(self, db):
        self.db = db

    def collect(self):
        try:
            with self.db.engine.connect() as connection:
                count, oldest = connection.execute(_BACKLOG).one()
        except SQLAlchemyError as error:
            log.warning("outbox figures unavailable", extra=db_error_fields(error) or {})
            return
        yield GaugeMetricFamily(
            "pms_outbox_backlog_events", "Events in the outbox not yet published", value=count
        )
        age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        yield GaugeMetricFamily(
            "pms_outbox_oldest_unsent_age_seconds",
            "Age of the oldest event in the outbox not yet published (0 when none waits)",
            value=age,
        )
