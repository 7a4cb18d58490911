"""`python -m audit.collector`: appends an entry for every audited request the
gateway saw, from the gateway's audit log (one JSON line per request, written
by Envoy to AUDIT_LOG_PATH; gateway/envoy.yaml).

Exactly once: the entries made from a chunk of lines and the position after
that chunk (the file's device:inode and byte offset) commit in one
transaction, so a collector that stops, or a database that is away, resumes
at the first line not yet in the trail; each entry also names its line
(`log:<file>:<offset>:<digest>`), which the store appends once. Only whole lines are
read: a line Envoy is still writing waits for the next round.

What a line becomes (`entry_of_line`): patient reads, searches and billing
reads, every 401 and 403 on a route that needs a token, logins, logouts,
changes to users, and patient changes that did not commit. A patient change
that did commit has its entry from its event (audit.consumer) and is skipped
here: its response names the event (patient.outbox.AUDIT_EVENT_HEADER).
Health, docs, OpenAPI documents, analytics figures, reading users and
reading this trail are not audited actions (see audit/README.md)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pms_common.models import utcnow
from pms_common.serve import Background, loop_main
from pms_common.status import StatusFile, status_path
from pms_common.worker import run_until_stopped

from . import MIGRATIONS_DIR, create_app
from .config import DEFAULT_LOG_NAME, Config
from .extensions import db
from .models import LogPosition
from .store import NewEntry, append_entries

log = logging.getLogger(__name__)
ROTATED_SUFFIX = ".1"  # what a rotation renames the log to (audit/README.md)
CHUNK_BYTES = 1 << 20  # the most one round reads (and one transaction appends)
MAX_TEXT = 320  # longest actor or address kept; longer is cut
# While the log does not grow, the pause between looks doubles up to this: the
# gateway writes its lines out about once a second (its file flush interval),
# so an idle collector looks about as often as lines could come.
IDLE_PAUSE_MAX_SECONDS = 1.0
UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# The gateway's routes by name (gateway/envoy.yaml). Every one of them needs a
# token but login and logout, so a 401 or 403 on one is DENIED.
PATIENTS_READ, PATIENTS_WRITE, BILLING_ACCOUNT = "patients_read", "patients_write", "billing_account"
FHIR_READ, FHIR_WRITE = "fhir_read", "fhir_write"
# Routes to patient records, REST and FHIR alike: reads and changes.
RECORD_READS, RECORD_WRITES = {PATIENTS_READ, FHIR_READ}, {PATIENTS_WRITE, FHIR_WRITE}
LOGIN, LOGOUT = "auth_login", "auth_logout"
PROTECTED_ROUTES = {
    PATIENTS_READ,
    PATIENTS_WRITE,
    FHIR_READ,
    FHIR_WRITE,
    BILLING_ACCOUNT,
    "auth_password",
    "auth_users",
    "auth_user",
    "analytics",
    "audit",
}
READ_METHODS = ("GET", "HEAD")
CHANGE_ACTIONS = {"POST": "CREATE", "PUT": "UPDATE", "DELETE": "DELETE"}


def _text(value) -> str | None:
    """A logged value, None for Envoy's "-" or an absent one."""
    if value is None or value == "-" or value == "":
        return None
    return str(value)[:MAX_TEXT]


def _patient_id(segment: str | None) -> str | None:
    """The record's id when the path names one; anything else in its place
    is not kept (a path may carry what a client typed)."""
    if segment is None or not UUID_TEXT.fullmatch(segment):
        return None
    return str(uuid.UUID(segment))


def _time(value) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return utcnow()
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _status(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _identity(line: dict) -> tuple[str | None, str | None]:
    """Who the gateway's token check said the caller is: ext_authz's answer
    (a yes or a 403), or the memo's yes, which set the identity headers
    itself. Identity headers on any other request are the client's and are
    never believed."""
    user = _text(line.get("authz_user"))
    if user is not None:
        return user, _text(line.get("authz_role"))
    if line.get("memo_hit") in (True, "true"):
        return _text(line.get("user")), _text(line.get("role"))
    return None, None


# The segment that names the record: after /patients/, /Patient/ (FHIR, also
# before /_history/) or /accounts/ (billing), in the gateway's path or the
# rewritten one the log may show.
RECORD_SEGMENT = re.compile(r"/(?:patients|Patient|accounts)/([^/?]+)")
COLLECTION = re.compile(r".*/(?:patients|Patient)/?")


def record_id_in(path: str) -> str | None:
    """The record's id when the path names one."""
    found = RECORD_SEGMENT.search(path.split("?", 1)[0])
    return _patient_id(found.group(1)) if found else None


def action_of(
    route: str, method: str, path: str, status: int | None, event_named: bool
) -> tuple[str, str | None] | None:
    """(action, patient id) of a request, or None when it is not audited here."""
    success = status is not None and 200 <= status < 300
    if route == LOGIN and method == "POST":
        return ("LOGIN" if success else "LOGIN_FAILED"), None
    if route == LOGOUT and method == "POST":
        return "LOGOUT", None
    if route not in PROTECTED_ROUTES:
        return None
    on_a_record = route in RECORD_READS or route in RECORD_WRITES or route == BILLING_ACCOUNT
    patient_id = record_id_in(path) if on_a_record else None
    if status in (401, 403):
        return "DENIED", patient_id
    if route in RECORD_READS and method in READ_METHODS:
        return ("SEARCH" if COLLECTION.fullmatch(path.split("?", 1)[0]) else "READ"), patient_id
    if route in RECORD_WRITES:
        action = CHANGE_ACTIONS.get(method)
        if action is None or (success and event_named):
            return None  # a committed change: its event makes the entry
        return action, patient_id
    if route == BILLING_ACCOUNT:
        return "BILLING_READ", patient_id  # the transcoder logs gRPC's POST
    if route == "auth_users" and method == "POST":
        return "USER_CREATED", None
    if (route == "auth_user" and method == "PATCH") or (route == "auth_password" and method == "POST"):
        return "USER_CHANGED", None
    return None


def entry_of_line(line: dict, source: str) -> NewEntry | None:
    """The entry of one line of the gateway's audit log, or None."""
    route, method, path = _text(line.get("route")), _text(line.get("method")), _text(line.get("path"))
    if route is None or method is None or path is None:
        return None
    status = _status(line.get("status"))
    found = action_of(route, method, path, status, _text(line.get("audit_event")) is not None)
    if found is None:
        return None
    action, patient_id = found
    actor, role = _identity(line)
    fields = None
    if action == "UPDATE" and status is not None and 200 <= status < 300:
        fields = ()  # answered without an event: the update changed nothing
    if action in ("LOGIN", "LOGIN_FAILED"):
        actor, role = _text(line.get("login_email")), None
    elif action == "LOGOUT":
        # The token's subject, believed only once auth accepted the token.
        actor = _text(line.get("token_subject")) if status is not None and 200 <= status < 300 else None
    return NewEntry(
        time=_time(line.get("time")),
        action=action,
        source=source,
        actor=actor,
        actor_role=role,
        patient_id=patient_id,
        request_id=_text(line.get("request_id")),
        status=status,
        client_address=_text(line.get("client")),
        fields=fields,
    )


def file_id(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


def line_source(current_file: str, position: int, raw: bytes) -> str:
    """What names a line: its file and offset, and a digest of its bytes (a
    file truncated in place has other lines at the same offsets)."""
    return f"log:{current_file}:{position}:{hashlib.sha256(raw).hexdigest()[:16]}"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def read_position(connection, log_name: str) -> tuple[str | None, int]:
    row = connection.execute(
        sa.select(LogPosition.file_id, LogPosition.offset).where(LogPosition.log == log_name)
    ).first()
    return (row.file_id, row.offset) if row else (None, 0)


def write_position(connection, log_name: str, current_file: str, offset: int) -> None:
    table = LogPosition.__table__
    insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)
    values = {"file_id": current_file, "offset": offset, "updated_at": utcnow()}
    connection.execute(
        insert.values(log=log_name, **values).on_conflict_do_update(index_elements=["log"], set_=values)
    )


class GatewayLogCollector:
    """Reads the gateway's audit log from the committed position and appends
    the entries of its whole lines, chunk by chunk."""

    def __init__(self, path, engine, interval_seconds=0.2, log_name=DEFAULT_LOG_NAME):
        self.path = str(path)
        self.engine = engine
        self.interval_seconds = interval_seconds
        self.log_name = log_name
        self._read_to: tuple[str, int] | None = None  # (file id, offset) of the last round's position
        self._idle_pause = interval_seconds  # the pause after a round that found the log as it was

    def collect_once(self) -> float:
        """One chunk: reads, appends and moves the position in one
        transaction; returns the pause before the next round (none while
        there is more to read). While the log has not grown past the
        position of the last round, no transaction is opened, and the pause
        doubles from interval_seconds up to IDLE_PAUSE_MAX_SECONDS."""
        current = _stat(self.path)
        if current is not None and self._read_to == (file_id(current), current.st_size):
            return self._idle_round()
        self._read_to = None
        with self.engine.begin() as connection:
            stored_file, offset = read_position(connection, self.log_name)
            source = self._file_to_read(stored_file, offset)
            if source is None:
                return self._idle_round()  # the gateway has not written yet
            path, current_file, offset = source
            with open(path, "rb") as log_file:
                log_file.seek(offset)
                chunk = log_file.read(CHUNK_BYTES)
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                # No whole line yet (a log still empty, say): as the last round left it.
                self._read_to = (current_file, offset)
                return self._idle_round()
            entries = []
            position = offset
            for raw in chunk[:end].splitlines(keepends=True):
                line = self._parse(raw, position)
                entry = (
                    entry_of_line(line, line_source(current_file, position, raw))
                    if line is not None
                    else None
                )
                position += len(raw)
                if entry is not None:
                    entries.append(entry)
            appended = append_entries(connection, entries)
            write_position(connection, self.log_name, current_file, offset + end)
        self._read_to, self._idle_pause = (current_file, offset + end), self.interval_seconds
        log.debug("audit log collected", extra={"bytes": end, "appended": appended})
        return 0.0 if len(chunk) == CHUNK_BYTES else self.interval_seconds

    def _idle_round(self) -> float:
        """The pause after a round that found nothing new: each one twice the last."""
        pause = self._idle_pause
        self._idle_pause = min(2 * pause, max(IDLE_PAUSE_MAX_SECONDS, self.interval_seconds))
        return pause

    def _file_to_read(self, stored_file: str | None, offset: int) -> tuple[str, str, int] | None:
        """(path, file id, offset) to read from: the file last read while it
        has more; after a rotation (the file renamed to `<path>.1`, Envoy
        told to reopen) the rest of the renamed file first, then the new file
        from its start."""
        current = _stat(self.path)
        if current is not None and file_id(current) == stored_file and current.st_size >= offset:
            return self.path, stored_file, offset
        rotated_path = self.path + ROTATED_SUFFIX
        rotated = _stat(rotated_path)
        if rotated is not None and file_id(rotated) == stored_file and rotated.st_size > offset:
            return rotated_path, stored_file, offset
        if current is None:
            return None
        if stored_file is not None:
            log.info(
                "reading the gateway's audit log from the start of a new file", extra={"path": self.path}
            )
        return self.path, file_id(current), 0

    def _parse(self, raw: bytes, position: int) -> dict | None:
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            log.error("unreadable line in the gateway's audit log", extra={"offset": position})
            return None
        return line


def work(config, app, stop):
    """Collects the gateway's audit log on the built app (its database
    migrated) until `stop` is set: in a process of its own or forked beside
    audit's web workers."""
    status = StatusFile(status_path(config.DATA_DIR, COLLECTOR.part))
    outage = status.outage("collecting the gateway's audit log")
    with app.app_context():
        collector = GatewayLogCollector(
            config.AUDIT_LOG_PATH, db.engine, config.COLLECT_INTERVAL_SECONDS, config.AUDIT_LOG_NAME
        )

        def step():
            pause = collector.collect_once()
            status.beat(idle=pause > 0)
            return pause

        status.report(outage.activity, None)
        log.info("audit collector started", extra={"path": config.AUDIT_LOG_PATH})
        run_until_stopped(outage.activity, step, stop, outage)


COLLECTOR = Background("audit-collector", work)


def main():
    loop_main(COLLECTOR, Config, create_app, MIGRATIONS_DIR)


if __name__ == "__main__":
    main()
