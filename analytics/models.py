"""The analytics store. One definition of the tables, used by the API (through
Flask-SQLAlchemy) and by the consumer (through SQLAlchemy Core on db.engine)."""
from datetime import timezone

import sqlalchemy as sa

from .extensions import db

SUMMARY_ROW_ID = 1  # the summary is one row of running totals


class UtcDateTime(sa.types.TypeDecorator):
    """A timestamp that goes in and comes out as an aware UTC datetime on
    SQLite (which keeps no zone) as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("UtcDateTime needs an aware datetime")
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value


class Summary(db.Model):
    """Running totals, changed only together with the events that cause them."""
    __tablename__ = "analytics_summary"

    id = sa.Column(sa.Integer, primary_key=True)
    patients_created = sa.Column(sa.BigInteger, nullable=False, default=0)
    patients_updated = sa.Column(sa.BigInteger, nullable=False, default=0)
    patients_deleted = sa.Column(sa.BigInteger, nullable=False, default=0)
    active_patients = sa.Column(sa.BigInteger, nullable=False, default=0)
    events_processed = sa.Column(sa.BigInteger, nullable=False, default=0)
    last_event_at = sa.Column(UtcDateTime)


class Registration(db.Model):
    """Patients registered in a month (by registered_date) and not deleted since."""
    __tablename__ = "analytics_registrations"

    month = sa.Column(sa.String(7), primary_key=True)  # YYYY-MM
    count = sa.Column(sa.BigInteger, nullable=False, default=0)


class PatientState(db.Model):
    """What the consumer knows of each patient, so a second create or delete of
    the same patient (under a new event id) does not count twice."""
    __tablename__ = "analytics_patients"

    patient_id = sa.Column(sa.String(36), primary_key=True)
    registered_month = sa.Column(sa.String(7))
    active = sa.Column(sa.Boolean, nullable=False)


class ProcessedEvent(db.Model):
    """Ids of the events already counted; written in the same transaction as
    their effect, so a redelivered event changes nothing."""
    __tablename__ = "analytics_processed_events"

    event_id = sa.Column(sa.String(36), primary_key=True)
    # Indexed: ids older than the dedup window are forgotten by this time.
    processed_at = sa.Column(UtcDateTime, nullable=False, index=True)


class ConsumerStatus(db.Model):
    """The consumer's heartbeat, read by the API's readiness check."""
    __tablename__ = "analytics_consumer_status"

    group_id = sa.Column(sa.String(200), primary_key=True)
    consumer = sa.Column(sa.String(200), nullable=False)  # host:pid of the last writer
    last_heartbeat = sa.Column(UtcDateTime, nullable=False)
    last_error = sa.Column(sa.Text)
    last_error_at = sa.Column(UtcDateTime)
