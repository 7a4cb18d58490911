"""Users, revoked tokens and failed logins."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from pms_common.models import BigIntegerKey, UtcDateTime, utcnow

from .extensions import db


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    # Stored as pms_common.identity.email_key; the unique index decides
    # duplicates, so two racing creates cannot both pass (no read-then-write check).
    email: Mapped[str] = mapped_column(sa.String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(255))
    disabled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Tokens carry the generation they were issued in (claim `gen`); a password
    # change, role change or disabling moves it on, which refuses older tokens.
    token_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    # The token that changed the password: it stays valid across that change.
    kept_jti: Mapped[str | None] = mapped_column(sa.String(64))


class RevokedToken(db.Model):
    """A logged-out token's id, kept until the token would have expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class LoginFailure(db.Model):
    """One failed login, under the account's key and again under the client's
    key; in the database so that every worker sees the same counts."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(320))
    failed_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (sa.Index("ix_login_failures_key_failed_at", key, failed_at),)
