"""The audit store: the entries (a hash chain), its head, and how far the
collector has read the gateway's audit log. One definition, used by the API
(Flask-SQLAlchemy) and by the consumer and collector (SQLAlchemy Core)."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from pms_common.models import UtcDateTime

from .extensions import db

HEAD_ROW_ID = 1  # the chain's head is one row
GENESIS_HASH = "0" * 64  # the prev_hash of the first entry ever


class AuditEntry(db.Model):
    """One audited request or change. `hash` is SHA-256 over the entry's
    content and `prev_hash` (audit.chain); ids are consecutive, given by the
    head, so a missing row shows. Triggers refuse UPDATE, and DELETE of a row
    the archive step has not passed (migration 1)."""

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str | None] = mapped_column(sa.String(320), index=True)
    actor_role: Mapped[str | None] = mapped_column(sa.String(16))
    action: Mapped[str] = mapped_column(sa.String(16), index=True)
    patient_id: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    request_id: Mapped[str | None] = mapped_column(sa.String(128))
    status: Mapped[int | None] = mapped_column(sa.Integer)
    client_address: Mapped[str | None] = mapped_column(sa.String(64))
    fields: Mapped[str | None] = mapped_column(sa.Text)  # JSON list of field names, for changes
    # Where the entry came from ("event:<id>" or "log:<file>:<offset>:<digest>"): each source once.
    source: Mapped[str] = mapped_column(sa.String(200), unique=True)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))


class ChainHead(db.Model):
    """The last entry's id and hash (appends lock this row, so the chain is
    one line), and the anchor the archive step leaves: entries up to
    `archived_through_id` were exported and removed, the last of them hashed
    `archived_hash`."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(sa.BigInteger)
    last_hash: Mapped[str] = mapped_column(sa.String(64))
    archived_through_id: Mapped[int] = mapped_column(sa.BigInteger)
    archived_hash: Mapped[str] = mapped_column(sa.String(64))


class LogPosition(db.Model):
    """How far the collector has read the gateway's audit log, committed with
    the entries made from what it read."""

    __tablename__ = "audit_log_positions"

    log: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    file_id: Mapped[str] = mapped_column(sa.String(64))  # device:inode of the file read
    offset: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
