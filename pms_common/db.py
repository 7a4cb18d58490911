"""Database setup shared by every service: engine options that make SQLite
safe for several processes, a liveness check for idle pooled connections,
and one readiness probe."""
import time

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

# A pooled connection unused this long is checked before it is handed out:
# the database may have restarted meanwhile. A busy pool skips the check, so
# a request does not pay a round trip for it (pool_pre_ping pings on every
# checkout, which cost a create a fifth of its time). A connection that dies
# while in use fails that request (503) and SQLAlchemy replaces the whole pool.
IDLE_CHECK_SECONDS = 10.0


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
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
def _note_checkin(_dbapi_connection, record):
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _check_if_idle(dbapi_connection, record, _proxy):
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


def padded_for_in(values):
    """The values for an IN list, padded to a power of two by repeating the
    last one (same result): batches of any size then make a handful of
    distinct statements, not one per size, so the statement caches of
    SQLAlchemy, the driver and the server stay small (a process's memory
    crept up by one cached statement per new batch size) and warm."""
    values = list(values)
    if len(values) > 1:
        values += values[-1:] * ((1 << (len(values) - 1).bit_length()) - len(values))
    return values


def engine_options(url):
    if url.startswith("sqlite"):
        return {}
    return {"pool_size": 10, "max_overflow": 20, "pool_recycle": 1800}


def check_database(engine):
    """Readiness: the database answers a query."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
