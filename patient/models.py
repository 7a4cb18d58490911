"""Patients, and the outbox of events about them."""

import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from pms_common.models import BigIntegerKey, UtcDateTime, utcnow

from .extensions import db

BILLING_PENDING, BILLING_ACTIVE = "PENDING", "ACTIVE"


class Patient(db.Model):
    __tablename__ = "patients"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(255))
    # identity.email_key(email), NFKC and case-folded: its unique index decides
    # duplicates, look-alikes included, so two racing creates cannot both pass.
    email_key: Mapped[str] = mapped_column(sa.String(255), unique=True)
    address: Mapped[str] = mapped_column(sa.String(255))
    date_of_birth: Mapped[date] = mapped_column(sa.Date)
    registered_date: Mapped[date] = mapped_column(sa.Date)
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    # FHIR administrative gender: male, female, other or unknown.
    gender: Mapped[str | None] = mapped_column(sa.String(16))
    # Given by the client or assigned at create (patient.records.new_record_number);
    # its unique index decides duplicates. Rows written around the API may lack one.
    medical_record_number: Mapped[str | None] = mapped_column(sa.String(32))
    billing_account_id: Mapped[str | None] = mapped_column(sa.String(64))
    billing_status: Mapped[str] = mapped_column(sa.String(16), default=BILLING_PENDING)
    billing_attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    billing_next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    # Optimistic locking: an UPDATE matches only the version it read, so an
    # If-Match check and the write it guards are atomic.
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        sa.Index("ix_patients_name_lower", sa.func.lower(name)),
        sa.Index("ix_patients_date_of_birth", date_of_birth),
        sa.Index("ix_patients_medical_record_number", medical_record_number, unique=True),
        sa.Index("ix_patients_billing_pending", billing_status, billing_next_attempt_at),
    )


class OutboxEvent(db.Model):
    """An event written in the same transaction as the change it describes;
    the worker publishes it and sets published_at once the broker acknowledges."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid.uuid4)
    patient_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    event_type: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The W3C traceparent of the request that wrote the event, when tracing is
    # on: the relay publishes the event inside that trace (pms_common.telemetry).
    trace_context: Mapped[str | None] = mapped_column(sa.String(128))

    __table_args__ = (
        # The relay only ever reads unpublished rows: keep that index small.
        sa.Index(
            "ix_outbox_unpublished",
            "id",
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        ),
    )


class AccountClosure(db.Model):
    """A billing account to close because no patient has it: the account of
    a create the database refused after billing had opened it, or one the
    reconciliation found. Written before the close is tried, so a close that
    fails, or a process that dies, leaves it for the worker; deleted once
    billing confirms."""

    __tablename__ = "account_closures"

    patient_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
