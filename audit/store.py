"""Appending to, reading and checking the audit trail.

Every entry is appended through `append_entries`, in the caller's
transaction: it locks the chain's head row (on PostgreSQL a row lock, on
SQLite the database's one write lock), so appends from the consumer and the
collector form one line; each entry gets the next id and the SHA-256 of its
content and of the previous entry's hash. An entry whose source (an event id,
a log position) is already in the trail is dropped, so a redelivery writes
nothing twice."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from pms_common.db import padded_for_in, plan_for_current_sizes

from .models import HEAD_ROW_ID, AuditEntry, ChainHead

ACTIONS = (
    "CREATE",
    "READ",
    "SEARCH",
    "UPDATE",
    "DELETE",
    "BILLING_READ",
    "DENIED",
    "LOGIN",
    "LOGIN_FAILED",
    "LOGOUT",
    "USER_CREATED",
    "USER_CHANGED",
)
VERIFY_CHUNK = 5000
entries_table = AuditEntry.__table__
head_table = ChainHead.__table__


@dataclass(frozen=True)
class NewEntry:
    """An entry to append: who did what to which record, when, from where,
    with what outcome (never the record's contents), and where it came from."""

    time: datetime
    action: str
    source: str
    actor: str | None = None
    actor_role: str | None = None
    patient_id: str | None = None
    request_id: str | None = None
    status: int | None = None
    client_address: str | None = None
    fields: tuple[str, ...] | None = None


def time_text(value: datetime) -> str:
    """The one spelling of a time, in the hash and in the API: RFC 3339, UTC, microseconds."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def entry_hash(entry_id, row, prev_hash) -> str:
    """SHA-256 over a canonical JSON of the entry (sorted keys, no spaces, UTF-8; `fields` a
    list of names or null) and the previous hash."""
    fields = row["fields"]
    content = {
        "id": entry_id,
        "time": time_text(row["time"]),
        "actor": row["actor"],
        "actorRole": row["actor_role"],
        "action": row["action"],
        "patientId": row["patient_id"],
        "requestId": row["request_id"],
        "status": row["status"],
        "clientAddress": row["client_address"],
        "fields": json.loads(fields) if isinstance(fields, str) else fields,
        "source": row["source"],
        "prevHash": prev_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _row_of(entry: NewEntry) -> dict:
    return {
        "time": entry.time.astimezone(UTC),
        "actor": entry.actor,
        "actor_role": entry.actor_role,
        "action": entry.action,
        "patient_id": entry.patient_id,
        "request_id": entry.request_id,
        "status": entry.status,
        "client_address": entry.client_address,
        "fields": None if entry.fields is None else json.dumps(sorted(entry.fields)),
        "source": entry.source,
    }


def lock_head(connection):
    """Takes the chain's head for this transaction and returns it: the row's
    lock on PostgreSQL, the write lock on SQLite, held until commit."""
    connection.execute(
        sa.update(head_table).where(head_table.c.id == HEAD_ROW_ID).values(last_id=head_table.c.last_id)
    )
    return connection.execute(sa.select(head_table).where(head_table.c.id == HEAD_ROW_ID)).one()


def append_entries(connection, entries: Iterable[NewEntry]) -> int:
    """Appends the entries whose source is new, in the caller's transaction;
    returns how many were appended."""
    batch: dict[str, NewEntry] = {}
    for entry in entries:
        if entry.action not in ACTIONS:
            raise ValueError(f"unknown audit action {entry.action!r}")
        batch.setdefault(entry.source, entry)
    if not batch:
        return 0
    head = lock_head(connection)
    plan_for_current_sizes(connection)
    seen = set(
        connection.scalars(
            sa.select(entries_table.c.source).where(entries_table.c.source.in_(padded_for_in(batch)))
        )
    )
    last_id, last_hash = head.last_id, head.last_hash
    rows = []
    for source, entry in batch.items():
        if source in seen:
            continue
        row = _row_of(entry)
        last_id += 1
        row.update(id=last_id, prev_hash=last_hash, hash=entry_hash(last_id, row, last_hash))
        last_hash = row["hash"]
        rows.append(row)
    if rows:
        connection.execute(sa.insert(entries_table), rows)
        connection.execute(
            sa.update(head_table)
            .where(head_table.c.id == HEAD_ROW_ID)
            .values(last_id=last_id, last_hash=last_hash)
        )
    return len(rows)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    first_broken_id: int | None = None

    def as_json(self) -> dict:
        answer: dict = {"ok": self.ok, "entries": self.entries}
        if not self.ok:
            answer["firstBrokenId"] = self.first_broken_id
        return answer


def verify(connection) -> Verdict:
    """Walks the chain from the archive's anchor: every id present and in
    order, every entry linked to the previous hash and hashing to its own,
    and the head naming the last one. A broken chain names the first id
    whose entry is missing, altered or unlinked."""
    head = connection.execute(sa.select(head_table).where(head_table.c.id == HEAD_ROW_ID)).one()
    expected_id, expected_prev = head.archived_through_id + 1, head.archived_hash
    count = 0
    while True:
        rows = connection.execute(
            sa.select(entries_table)
            .where(entries_table.c.id >= expected_id)
            .order_by(entries_table.c.id)
            .limit(VERIFY_CHUNK)
        ).all()
        for row in rows:
            if row.id != expected_id or row.prev_hash != expected_prev:
                return Verdict(False, count, expected_id)
            if entry_hash(row.id, row._mapping, row.prev_hash) != row.hash:
                return Verdict(False, count, row.id)
            count += 1
            expected_id, expected_prev = row.id + 1, row.hash
        if len(rows) < VERIFY_CHUNK:
            break
    if head.last_id != expected_id - 1 or head.last_hash != expected_prev:
        # The newest entries are gone (or the head was moved): the first missing id.
        return Verdict(False, count, min(expected_id, head.last_id + 1))
    return Verdict(True, count)


def read_entries_query(patient_id=None, actor=None, action=None, start=None, end=None):
    """The entries matching the filters, newest first."""
    query = sa.select(AuditEntry)
    if patient_id is not None:
        query = query.where(AuditEntry.patient_id == str(patient_id))
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if start is not None:
        query = query.where(AuditEntry.time >= start)
    if end is not None:
        query = query.where(AuditEntry.time <= end)
    return query.order_by(AuditEntry.time.desc(), AuditEntry.id.desc())
