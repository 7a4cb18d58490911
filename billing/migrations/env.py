"""Alembic environment for billing. Start-up passes its connection in
config.attributes; the alembic CLI (alembic.ini here) connects to the
configured DATABASE_URL instead."""

from alembic import context

from billing.store import VERSION_TABLE, metadata, own_names
from pms_common.db import create_engine


def run_migrations(connection):
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_name=own_names,
        version_table=VERSION_TABLE,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main():
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    from billing.config import Config

    config = Config()
    engine = create_engine(config.DATABASE_URL)
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


main()
