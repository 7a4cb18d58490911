"""The committed migrations build the schema the code expects, on both databases."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from billing.store import VERSION_TABLE, Store, alembic_config, metadata, own_names


def test_upgrade_from_empty_creates_the_schema(database_url):
    store = Store(database_url)
    try:
        with store.engine.begin() as connection:  # another service's table in the same database
            connection.execute(sa.text("CREATE TABLE patients (id INTEGER PRIMARY KEY)"))
        store.migrate()
        store.migrate()  # a second start-up finds nothing to do

        inspector = sa.inspect(store.engine)
        assert set(inspector.get_table_names()) == {"billing_accounts", VERSION_TABLE, "patients"}
        unique = inspector.get_unique_constraints("billing_accounts")
        assert [constraint["column_names"] for constraint in unique] == [["patient_id"]]
        with store.engine.connect() as connection:
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert connection.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")) == head
            # The migrations and the table the code uses agree.
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "include_name": own_names}
            )
            assert compare_metadata(context, metadata) == []
        store.check()
    finally:
        store.dispose()
