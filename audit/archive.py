"""`python -m audit archive --before TIME --out FILE`: the one way entries
leave the trail. Entries older than AUDIT_RETENTION_DAYS (and than --before)
are written to FILE as JSON lines, each with its hash and prev_hash, then a
last line naming the last archived id and hash; only once the file is on disk
are they deleted, in the transaction that moves the head's anchor to that
last entry. `verify` then starts from the anchor, so the chain still checks,
and the file's own chain ends in the anchor's hash."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from pms_common.config import ConfigError
from pms_common.models import utcnow

from .models import HEAD_ROW_ID
from .store import entries_table, head_table, lock_head, time_text, verify

ARCHIVE_CHUNK = 5000


def archivable_through(connection, before: datetime, archived_through: int) -> int:
    """The last id of the oldest run of entries all older than `before`: the
    archive takes a prefix of the chain, never leaves a hole in it."""
    first_kept = connection.scalar(
        sa.select(sa.func.min(entries_table.c.id)).where(
            entries_table.c.id > archived_through, entries_table.c.time >= before
        )
    )
    if first_kept is not None:
        return first_kept - 1
    return connection.scalar(sa.select(sa.func.max(entries_table.c.id))) or archived_through


def exported(row) -> dict:
    return {
        "id": row.id,
        "time": time_text(row.time),
        "actor": row.actor,
        "actorRole": row.actor_role,
        "action": row.action,
        "patientId": row.patient_id,
        "requestId": row.request_id,
        "status": row.status,
        "clientAddress": row.client_address,
        "fields": None if row.fields is None else json.loads(row.fields),
        "source": row.source,
        "prevHash": row.prev_hash,
        "hash": row.hash,
    }


def archive(engine, before: datetime, out_path: str) -> int:
    """Exports and removes the entries older than `before`; returns how many.
    A broken chain is not archived: its evidence stays where verify finds it.
    An existing file is never overwritten (FileExistsError)."""
    if os.path.exists(out_path):
        raise FileExistsError(out_path)
    with engine.begin() as connection:
        head = lock_head(connection)
        verdict = verify(connection)
        if not verdict.ok:
            raise ConfigError(
                f"the audit chain is broken at entry {verdict.first_broken_id}; nothing archived"
            )
        through = archivable_through(connection, before, head.archived_through_id)
        if through <= head.archived_through_id:
            return 0
        last_hash = head.archived_hash
        count = 0
        with open(out_path, "x", encoding="utf-8") as out:
            next_id = head.archived_through_id + 1
            while next_id <= through:
                rows = connection.execute(
                    sa.select(entries_table)
                    .where(entries_table.c.id >= next_id, entries_table.c.id <= through)
                    .order_by(entries_table.c.id)
                    .limit(ARCHIVE_CHUNK)
                ).all()
                for row in rows:
                    out.write(json.dumps(exported(row), sort_keys=True) + "\n")
                    last_hash, count = row.hash, count + 1
                next_id = rows[-1].id + 1
            out.write(
                json.dumps(
                    {
                        "archivedThroughId": through,
                        "lastHash": last_hash,
                        "previousAnchorHash": head.archived_hash,
                    }
                )
                + "\n"
            )
            out.flush()
            os.fsync(out.fileno())
        # The anchor moves first: the tables' triggers delete only what it has passed.
        connection.execute(
            sa.update(head_table)
            .where(head_table.c.id == HEAD_ROW_ID)
            .values(archived_through_id=through, archived_hash=last_hash)
        )
        connection.execute(sa.delete(entries_table).where(entries_table.c.id <= through))
    return count


def parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Archive:
    """The operator command (pms_common.entry.Command)."""

    help = "export entries older than the retention period to a file, then remove them (chain kept)"

    def __init__(self, make_engine):
        self.make_engine = make_engine

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--before",
            type=parse_time,
            help="archive entries older than this ISO time (default and latest: now - AUDIT_RETENTION_DAYS)",
        )
        parser.add_argument("--out", required=True, help="the JSON-lines file to write (must not exist)")

    def __call__(self, config, arguments: argparse.Namespace) -> int:
        latest = utcnow() - timedelta(days=config.RETENTION_DAYS)
        before = arguments.before or latest
        if before > latest:
            print(
                f"audit: entries are kept AUDIT_RETENTION_DAYS ({config.RETENTION_DAYS}) days; "
                f"--before must be {time_text(latest)} or earlier"
            )
            return 1
        try:
            count = archive(self.make_engine(config), before, arguments.out)
        except FileExistsError:
            print(f"audit: {arguments.out} exists; nothing archived")
            return 1
        except ConfigError as error:
            print(f"audit: {error}")
            return 1
        print(f"audit: {count} entries archived to {arguments.out}")
        return 0
