"""Billing accounts in SQL: one per patient, opened once, closed once."""
import base64
import secrets
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite

from pms_common.config import normalize_database_url
from pms_common.db import engine_options

ACTIVE, CLOSED = "ACTIVE", "CLOSED"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version_billing"  # one DATABASE_URL may hold every service's tables

# Named constraints: batch migrations on SQLite can only alter what has a name.
metadata = sa.MetaData(naming_convention={
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
})

accounts = sa.Table(
    "billing_accounts", metadata,
    sa.Column("account_id", sa.String(32), primary_key=True),
    sa.Column("patient_id", sa.Uuid, nullable=False, unique=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint(f"status IN ('{ACTIVE}', '{CLOSED}')", name="status"),
)

_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def new_account_id():
    """ACC- and 16 base32 characters (80 random bits): readable, unguessable."""
    return "ACC-" + base64.b32encode(secrets.token_bytes(10)).decode()


def own_names(name, type_, _parent_names):
    """Autogenerate looks only at billing's tables: the database may be shared."""
    return type_ != "table" or name in metadata.tables


def alembic_config():
    """The migrations' settings, built in code (start-up needs no alembic.ini)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def utcnow():
    return datetime.now(timezone.utc)


class Store:
    def __init__(self, database_url):
        self.url = normalize_database_url(database_url)
        # Every call is one statement, atomic by itself, so the pool's
        # connections stay in autocommit: no BEGIN and COMMIT round trips, and
        # no switching a connection's mode at each checkout (a fifth of a
        # call's SQLAlchemy time).
        self.engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", **engine_options(self.url))
        insert = _INSERT[self.engine.dialect.name]
        by_patient = accounts.c.patient_id == sa.bindparam("patient")
        # Built once; each call only binds values.
        self._open = (insert(accounts).on_conflict_do_nothing(index_elements=[accounts.c.patient_id])
                      .returning(*accounts.c))
        self._get = sa.select(accounts).where(by_patient)
        self._close = (sa.update(accounts).where(by_patient, accounts.c.status == ACTIVE)
                       .values(status=CLOSED, closed_at=sa.bindparam("now")))

    def migrate(self):
        """Brings the schema to the newest migration."""
        config = alembic_config()
        # In a transaction, on an engine of its own: a failed migration leaves nothing half done.
        engine = sa.create_engine(self.url)
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
            row = connection.execute(self._open, {
                "account_id": new_account_id(), "patient_id": patient_id, "name": name,
                "email": email, "status": ACTIVE, "created_at": utcnow(), "closed_at": None,
            }).first()
            if row is None:
                row = connection.execute(self._get, {"patient": patient_id}).one()
        return row

    def get_account(self, patient_id):
        with self.engine.connect() as connection:
            return connection.execute(self._get, {"patient": patient_id}).first()

    def close_account(self, patient_id):
        """Closes the account (a closed one keeps its first closed_at); None if there is none.
        The UPDATE commits by itself; the read after it sees the account as it now is."""
        with self.engine.connect() as connection:
            connection.execute(self._close, {"patient": patient_id, "now": utcnow()})
            return connection.execute(self._get, {"patient": patient_id}).first()

    def dispose(self):
        self.engine.dispose()
