import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

ADMIN, USER = "ADMIN", "USER"
ROLES = (ADMIN, USER)


def utcnow():
    return datetime.now(timezone.utc)


class UtcDateTime(sa.TypeDecorator):
    """A timestamp that always comes back zone-aware in UTC (SQLite stores
    them without a zone; they are written in UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, _dialect):
        return value.astimezone(timezone.utc) if value is not None and value.tzinfo else value

    def process_result_value(self, value, _dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    # Stored lower-cased; the unique index decides duplicates, so two racing
    # creates cannot both pass (no read-then-write check).
    email: Mapped[str] = mapped_column(sa.String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(255))


class RevokedToken(db.Model):
    """A logged-out token's id, kept until the token would have expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class LoginFailure(db.Model):
    """One failed login, under the account's key and again under the client's
    key; in the database so that every worker sees the same counts."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(320))
    failed_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (sa.Index("ix_login_failures_key_failed_at", key, failed_at),)
