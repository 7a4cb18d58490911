"""Alembic environment for the analytics store.

The API and the consumer both upgrade at start and may start together, so
upgrades hold a lock: a transaction-scoped advisory lock on PostgreSQL, a
file lock beside the database on SQLite. The one that waits then finds the
schema current and does nothing."""
import fcntl
import logging
import zlib
from contextlib import contextmanager

from alembic import context
from flask import current_app
from sqlalchemy import text

VERSION_TABLE = "alembic_version_analytics"
# Same number in every process that migrates this store.
ADVISORY_LOCK_KEY = zlib.crc32(VERSION_TABLE.encode())

config = context.config
logger = logging.getLogger("alembic.env")
target_db = current_app.extensions["migrate"].db


def configure_args():
    return {"version_table": VERSION_TABLE, "render_as_batch": True, "compare_type": True,
            **current_app.extensions["migrate"].configure_args}


@contextmanager
def sqlite_file_lock(url):
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def run_migrations_offline():
    context.configure(url=str(target_db.engine.url), target_metadata=target_db.metadata,
                      literal_binds=True, **configure_args())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    def skip_empty_autogenerate(_context, _revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    args = configure_args()
    args.setdefault("process_revision_directives", skip_empty_autogenerate)
    engine = target_db.engine
    with sqlite_file_lock(engine.url), engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_db.metadata, **args)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
