"""The analytics store. One definition of the tables, used by the API (through
Flask-SQLAlchemy) and by the consumer (through SQLAlchemy Core on db.engine)."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from pms_common.models import UtcDateTime

from .extensions import db

SUMMARY_ROW_ID = 1  # the summary is one row of running totals


class Summary(db.Model):
    """Running totals, changed only together with the events that cause them."""

    __tablename__ = "analytics_summary"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    patients_created: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    patients_updated: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    patients_deleted: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    active_patients: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    events_processed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_event_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Registration(db.Model):
    """Patients registered in a month (by registered_date) and not deleted since."""

    __tablename__ = "analytics_registrations"

    month: Mapped[str] = mapped_column(sa.String(7), primary_key=True)  # YYYY-MM
    count: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class PatientState(db.Model):
    """What the consumer knows of each patient, so a second create or delete of
    the same patient (under a new event id) does not count twice."""

    __tablename__ = "analytics_patients"

    patient_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    registered_month: Mapped[str | None] = mapped_column(sa.String(7))
    active: Mapped[bool] = mapped_column(sa.Boolean)


class ProcessedEvent(db.Model):
    """Ids of the events already counted; written in the same transaction as
    their effect, so a redelivered event changes nothing."""

    __tablename__ = "analytics_processed_events"

    event_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    # Indexed: ids older than the dedup window are forgotten by this time.
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class ConsumerStatus(db.Model):
    """The consumer's heartbeat, read by the API's readiness check."""

    __tablename__ = "analytics_consumer_status"

    group_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    consumer: Mapped[str] = mapped_column(sa.String(200))  # host:pid of the last writer
    last_heartbeat: Mapped[datetime] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
