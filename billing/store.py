"""Billing accounts in SQL: the statements of each call, built once, and the
migrations that make the table."""

import base64
import secrets
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pms_common import metrics
from pms_common.db import create_engine
from pms_common.models import utcnow

from .models import ACTIVE, CLOSED, Account, Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version_billing"  # one DATABASE_URL may hold every service's tables
metadata = Base.metadata
# The calls run Core statements on the table: they need none of the ORM's work.
accounts = Account.__table__

_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def accounts_opened():
    return metrics.counter("pms_billing_accounts_opened_total", "Billing accounts opened")


def accounts_closed():
    return metrics.counter("pms_billing_accounts_closed_total", "Billing accounts closed")


def new_account_id():
    """ACC- and 16 base32 characters (80 random bits): readable, unguessable."""
    return "ACC-" + base64.b32encode(secrets.token_bytes(10)).decode()


def own_names(name, type_, _parent_names):
    """Autogenerate looks only at billing's tables: the database may be shared."""
    return type_ != "table" or name in metadata.tables


def alembic_config():
    """The migrations' settings, built in code (start-up needs no alembic.ini).
    alembic is imported here: the server migrates in a child process
    (billing.__main__), and its own never holds alembic."""
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


class Store:
    def __init__(self, database_url):
        self._url = database_url
        # Every call is one statement, atomic by itself, so the pool's
        # connections stay in autocommit: no BEGIN and COMMIT round trips, and
        # no switching a connection's mode at each checkout.
        self.engine = create_engine(database_url, autocommit=True)
        insert = _INSERT[self.engine.dialect.name]
        by_patient = accounts.c.patient_id == sa.bindparam("patient")
        # Built once; each call only binds values.
        self._open = (
            insert(accounts)
            .on_conflict_do_nothing(index_elements=[accounts.c.patient_id])
            .returning(*accounts.c)
        )
        self._get = sa.select(accounts).where(by_patient)
        self._close = (
            sa.update(accounts)
            .where(by_patient, accounts.c.status == ACTIVE)
            .values(status=CLOSED, closed_at=sa.bindparam("now"))
        )
        # Pages by patient_id (its unique index), each after the last one seen.
        self._active_first = (
            sa.select(accounts.c.patient_id)
            .where(accounts.c.status == ACTIVE, accounts.c.created_at <= sa.bindparam("opened_by"))
            .order_by(accounts.c.patient_id)
            .limit(sa.bindparam("page_size"))
        )
        self._active_after = self._active_first.where(accounts.c.patient_id > sa.bindparam("after"))

    def migrate(self):
        """Brings the schema to the newest migration."""
        from alembic import command

        config = alembic_config()
        # In a transaction, on an engine of its own: a failed migration leaves nothing half done.
        engine = create_engine(self._url)
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        finally:
            engine.dispose()

    def check(self):
        """Readiness: the database answers and the table is there."""
        with self.engine.connect() as connection:
            connection.execute(sa.select(accounts.c.account_id).limit(1)).all()

    def open_account(self, patient_id, name, email):
        """The patient's account, made now unless one exists. The UNIQUE
        patient_id decides between racing calls: the loser's insert does
        nothing and it reads the winner's row. An existing account is returned
        as it is, even CLOSED: a patient never gets a second account. Each
        statement commits on its own (autocommit): the insert is atomic and
        the read after a lost race sees the winner's committed row."""
        with self.engine.connect() as connection:
            row = connection.execute(
                self._open,
                {
                    "account_id": new_account_id(),
                    "patient_id": patient_id,
                    "name": name,
                    "email": email,
                    "status": ACTIVE,
                    "created_at": utcnow(),
                    "closed_at": None,
                },
            ).first()
            if row is None:
                row = connection.execute(self._get, {"patient": patient_id}).one()
            else:
                accounts_opened().inc()
        return row

    def get_account(self, patient_id):
        with self.engine.connect() as connection:
            return connection.execute(self._get, {"patient": patient_id}).first()

    def close_account(self, patient_id):
        """Closes the account (a closed one keeps its first closed_at); None if there is none.
        The UPDATE commits by itself; the read after it sees the account as it now is."""
        with self.engine.connect() as connection:
            if connection.execute(self._close, {"patient": patient_id, "now": utcnow()}).rowcount:
                accounts_closed().inc()
            return connection.execute(self._get, {"patient": patient_id}).first()

    def list_active_accounts(self, min_age, after, page_size):
        """Patient ids of ACTIVE accounts opened at least `min_age` (a
        timedelta) ago, in patient_id order, after `after` (None: from the
        first), at most `page_size` of them."""
        params = {"opened_by": utcnow() - min_age, "page_size": page_size}
        statement = self._active_first
        if after is not None:
            statement, params["after"] = self._active_after, after
        with self.engine.connect() as connection:
            return connection.execute(statement, params).scalars().all()

    def dispose(self):
        self.engine.dispose()
