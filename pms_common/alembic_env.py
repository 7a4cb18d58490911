"""The body of every Flask service's migrations/env.py (Flask-Migrate).

Each service's env.py is just `run_migrations()`. Logging is left as the entry
point configured it (no fileConfig), and per-service options such as the
version table come from `Migrate(..., version_table=...)`.

Two processes of one service (an API and its worker, or two replicas) may
upgrade at the same moment, so an upgrade holds a lock: a transaction-scoped
advisory lock on PostgreSQL, a file lock beside the database on SQLite. The
one that waited then finds the schema current and does nothing.
"""

import fcntl
import logging
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import context
from flask import current_app
from sqlalchemy import text
from sqlalchemy.engine import URL

log = logging.getLogger(__name__)


@contextmanager
def sqlite_file_lock(url: URL) -> Iterator[None]:
    """Holds an exclusive lock on a file beside a SQLite database (nothing for
    another database, or one in memory)."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    # Owner-only like the database beside it.
    with os.fdopen(os.open(f"{database}.migrate.lock", os.O_CREAT | os.O_WRONLY, 0o600), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def run_migrations() -> None:
    migrate_ext = current_app.extensions["migrate"]
    db = migrate_ext.db
    engine = db.engine
    configure_args = dict(migrate_ext.configure_args)
    configure_args.setdefault("render_as_batch", engine.url.get_backend_name() == "sqlite")
    # Same key in every process that migrates this service's tables.
    lock_key = zlib.crc32(configure_args.get("version_table", "alembic_version").encode())

    if context.is_offline_mode():
        context.configure(
            url=str(engine.url).replace("%", "%%"),
            target_metadata=db.metadata,
            literal_binds=True,
            **configure_args,
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    def skip_empty(_context: Any, _revision: Any, directives: list[Any]) -> None:
        if getattr(context.config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            log.info("No changes in schema detected.")

    with sqlite_file_lock(engine.url), engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=db.metadata,
            process_revision_directives=skip_empty,
            **configure_args,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
            context.run_migrations()
