"""Database setup shared by every part: one engine setup (options, SQLite
pragmas, a liveness check of idle pooled connections), one way to run a
statement in autocommit, one readiness probe, and private SQLite files. What a
log line may say about a database error is in db_errors."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool

from .config import normalize_database_url
from .telemetry import recording_trace, tracing_configured, untraced

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

# A pooled connection unused this long is checked before it is handed out:
# the database may have restarted meanwhile. A busy pool skips the check, so a
# request does not pay a round trip for it (pool_pre_ping's cost: bench/README.md,
# "Database connections"). A connection that dies while in use fails that
# request (503) and SQLAlchemy replaces the whole pool.
IDLE_CHECK_SECONDS = 10.0
# Flask-SQLAlchemy's bind key of a part's autocommit pool (database_binds).
AUTOCOMMIT_BIND = "autocommit"
AUTOCOMMIT = "AUTOCOMMIT"

Value = TypeVar("Value")


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes a second
    # writer wait instead of failing at once with "database is locked".
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


@event.listens_for(Pool, "checkin")
def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _check_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    checked_in_at = record.info.get("checked_in_at")
    if checked_in_at is None or time.monotonic() - checked_in_at < IDLE_CHECK_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()
    except Exception as error:  # any driver's "connection is gone"
        # The pool then discards this connection and tries a new one.
        raise exc.DisconnectionError(str(error)) from error


def padded_for_in(values: Iterable[Value]) -> list[Value]:
    """The values for an IN list, padded to a power of two by repeating the
    last one (same result): batches of any size then make a handful of
    distinct statements, not one per size, so the statement caches of
    SQLAlchemy, the driver and the server stay small and warm."""
    padded = list(values)
    if len(padded) > 1:
        padded += padded[-1:] * ((1 << (len(padded) - 1).bit_length()) - len(padded))
    return padded


def plan_for_current_sizes(connection: Connection) -> None:
    """Has PostgreSQL plan the rest of this transaction's statements for their
    values and the tables as they are now (plan_cache_mode force_custom_plan,
    SET LOCAL). A prepared lookup otherwise settles on a generic plan made
    while its table was nearly empty, a sequential scan, and keeps it as the
    table grows until the next ANALYZE: every batch then reads the whole
    table. For the lookups of a batch's keys in a table that keeps growing."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))


def engine_options(url: str, *, autocommit: bool = False) -> dict[str, Any]:
    """create_engine's options for `url`, the same for Flask-SQLAlchemy's
    engines (SQLALCHEMY_ENGINE_OPTIONS) and the ones a part builds itself
    (create_engine). With `autocommit` every statement commits by itself."""
    # SQL parameters are patients' names, emails and addresses: an error's
    # text (which ends up in logs and tracebacks) must not carry them.
    options: dict[str, Any] = {"hide_parameters": True}
    if autocommit:
        options["isolation_level"] = AUTOCOMMIT
    if url.startswith("sqlite"):
        return options
    return {**options, "pool_size": 10, "max_overflow": 20, "pool_recycle": 1800}


def create_engine(url: str, *, autocommit: bool = False) -> Engine:
    """An engine a part builds outside Flask-SQLAlchemy (billing, scripts),
    set up as Flask-SQLAlchemy's are: same options, pragmas and idle check.
    Its statements are traced only once it is given to `instrument_engines`:
    the SQLAlchemy instrumentation, once on in a process, would otherwise
    trace every engine made after it (the relay's lease, a migration's)."""
    url = normalize_database_url(url)
    with untraced(None) if tracing_configured() else contextlib.nullcontext():
        return sa.create_engine(url, **engine_options(url, autocommit=autocommit))


def database_binds(url: str) -> dict[str, dict[str, Any]]:
    """Flask-SQLAlchemy's SQLALCHEMY_BINDS for a part on `url`: on PostgreSQL
    a second pool whose connections stay in autocommit, for
    autocommit_connection, so that no connection of the main pool switches
    its mode at checkout and back at return. SQLite, in process, has no round
    trips to save."""
    if not url.startswith("postgresql"):
        return {}
    return {AUTOCOMMIT_BIND: {"url": url, **engine_options(url, autocommit=True)}}


def autocommit_connection(db: SQLAlchemy) -> Connection:
    """A connection of a Flask part on which each statement commits by
    itself, with no BEGIN or COMMIT round trips: for one statement that is
    atomic alone (a read, or a write that is one statement). From the part's
    autocommit pool (database_binds), else its main pool's connection
    switched to autocommit for this use."""
    pool = db.engines.get(AUTOCOMMIT_BIND)
    if pool is not None:
        return pool.connect()
    return db.engine.connect().execution_options(isolation_level=AUTOCOMMIT)


# SQLite creates a database's -wal and -shm files with the database file's
# own mode, so a file made private before SQLite opens it stays private.
SQLITE_FILE_MODE = 0o600
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def make_sqlite_file_private(path: str | os.PathLike[str]) -> None:
    """Creates the SQLite file owner-only (0600) if missing, and tightens it
    and its companions if they exist."""
    database = Path(path)
    descriptor = os.open(database, os.O_CREAT | os.O_WRONLY, SQLITE_FILE_MODE)
    os.close(descriptor)
    for suffix in SQLITE_COMPANIONS:
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            companion.chmod(SQLITE_FILE_MODE)


def check_database(engine: Engine) -> None:
    """Readiness: the database answers a query."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


# The pool events the SQLAlchemy instrumentation listens to (its `_pool_<event>` methods).
POOL_EVENTS = ("connect", "close", "checkin", "checkout")


def instrument_engines(engines: Iterable[Any]) -> None:
    """Spans for every statement of these engines, when tracing is configured."""
    if not tracing_configured():
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.utils import unwrap

    engines = list(engines)
    if engines:
        # Its declared range stops below SQLAlchemy 2.1, whose engine events it uses unchanged.
        tracers = SQLAlchemyInstrumentor().instrument(
            engines=engines, enable_commenter=False, skip_dep_check=True
        )
        # Its "connect" span (it wraps Engine.connect) marks each checkout
        # from the pool, not a new database connection: a span per request
        # that says nothing the statements' spans do not, at a statement's cost.
        for engine_class in {type(engine) for engine in engines}:
            unwrap(engine_class, "connect")
        # Its pool listeners (each checkout, checkin, connect and close) feed
        # an OpenTelemetry connections metric, which this system does not
        # export (its metrics are Prometheus'): work at every checkout, for nothing.
        if tracers is None:  # an earlier call instrumented this process already
            return
        for engine, tracer in zip(engines, tracers, strict=True):
            for pool_event in POOL_EVENTS:
                event.remove(engine, pool_event, getattr(tracer, f"_pool_{pool_event}"))
            engine.__class__ = EventsWhileInstrumented
            engine._has_events = False


class EventsWhileInstrumented(Engine):
    """An instrumented engine whose connections fire their events only when
    opened for work of a recorded trace (`telemetry.recording_trace`): the
    statements of an unsampled request, a probe or a poll skip them.

    SQLAlchemy dispatches every event point of a connection (begin, each
    statement, commit) while its engine has listeners, and the
    instrumentation's listeners then make a span that is not recorded or
    return at once: that dispatch was most of what tracing added to an
    unsampled call to billing. A connection event listener added to such an
    engine later makes every connection fire again, as SQLAlchemy does; pool
    events are not affected."""

    def connect(self) -> Connection:
        connection = super().connect()
        if recording_trace():
            connection._has_events = True
        return connection
