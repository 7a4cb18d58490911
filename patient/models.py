import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

BILLING_PENDING, BILLING_ACTIVE = "PENDING", "ACTIVE"


def utcnow():
    return datetime.now(timezone.utc)


class Patient(db.Model):
    __tablename__ = "patients"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(255))
    # Lower-cased email: its unique index decides duplicates, so two racing
    # creates cannot both pass (no read-then-write check).
    email_key: Mapped[str] = mapped_column(sa.String(255), unique=True)
    address: Mapped[str] = mapped_column(sa.String(255))
    date_of_birth: Mapped[datetime] = mapped_column(sa.Date)
    registered_date: Mapped[datetime] = mapped_column(sa.Date)
    billing_account_id: Mapped[str | None] = mapped_column(sa.String(64))
    billing_status: Mapped[str] = mapped_column(sa.String(16), default=BILLING_PENDING)
    billing_attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    billing_next_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)
    # Optimistic locking: an UPDATE matches only the version it read, so an
    # If-Match check and the write it guards are atomic.
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        sa.Index("ix_patients_name_lower", sa.func.lower(name)),
        sa.Index("ix_patients_billing_pending", billing_status, billing_next_attempt_at),
    )


class OutboxEvent(db.Model):
    """An event written in the same transaction as the change it describes;
    the worker publishes it and sets published_at once the broker acknowledges."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid.uuid4)
    patient_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    event_type: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (
        # The relay only ever reads unpublished rows: keep that index small.
        sa.Index("ix_outbox_unpublished", "id", postgresql_where=sa.text("published_at IS NULL"),
                 sqlite_where=sa.text("published_at IS NULL")),
    )
