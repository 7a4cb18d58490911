"""Billing's table: one account per patient, opened once, closed once."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pms_common.models import UtcDateTime

ACTIVE, CLOSED = "ACTIVE", "CLOSED"


class Base(DeclarativeBase):
    # Named constraints: batch migrations on SQLite can only alter what has a name.
    metadata = sa.MetaData(
        naming_convention={
            "pk": "pk_%(table_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "ix": "ix_%(table_name)s_%(column_0_name)s",
        }
    )


class Account(Base):
    __tablename__ = "billing_accounts"

    account_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    email: Mapped[str] = mapped_column(sa.String(320))
    status: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (sa.CheckConstraint(f"status IN ('{ACTIVE}', '{CLOSED}')", name="status"),)
