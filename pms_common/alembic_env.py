"""The body of every Flask service's migrations/env.py (Flask-Migrate).

Each service's env.py is just `run_migrations()`. Logging is left as the entry
point configured it (no fileConfig), and per-service options such as the
version table come from `Migrate(..., version_table=...)`."""
import logging

from alembic import context
from flask import current_app

log = logging.getLogger("alembic.env")


def run_migrations():
    migrate_ext = current_app.extensions["migrate"]
    db = migrate_ext.db
    engine = db.engine
    configure_args = dict(migrate_ext.configure_args)
    configure_args.setdefault("render_as_batch", engine.url.get_backend_name() == "sqlite")

    if context.is_offline_mode():
        context.configure(url=str(engine.url).replace("%", "%%"), target_metadata=db.metadata,
                          literal_binds=True, **configure_args)
        with context.begin_transaction():
            context.run_migrations()
        return

    def skip_empty(_context, _revision, directives):
        if getattr(context.config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            log.info("No changes in schema detected.")

    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=db.metadata,
                          process_revision_directives=skip_empty, **configure_args)
        with context.begin_transaction():
            context.run_migrations()
