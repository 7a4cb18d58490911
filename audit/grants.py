"""`python -m audit.grants`: run once per deploy as the audit database's owner
(compose's audit-migrate, the audit task's init container in CloudFormation).
Applies the migrations, then makes the role the audit processes run as
(AUDIT_SERVICE_DB_USER, password AUDIT_SERVICE_DB_PASSWORD) and gives it only
what appending and reading the trail need: no UPDATE or DELETE of an entry,
no DDL, whatever the triggers (audit/README.md, "Tamper evidence").

Every run takes the role's table grants away and gives them again, so a run
after a new migration (or a changed password) leaves exactly these."""

import re
import zlib

from psycopg import sql

from pms_common.config import ConfigError, env_str
from pms_common.entry import run_main
from pms_common.serve import migrate_and_seed

from . import MIGRATIONS_DIR, create_app
from .config import Config
from .extensions import db

DEFAULT_SERVICE_USER = "audit_service"
ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
VERSION_TABLE = "alembic_version_audit"
GRANTS_LOCK_KEY = zlib.crc32(b"audit.grants")
# What the API, the consumer and the collector do: append entries and read
# them, move the chain's head, keep the collector's file positions; at start
# they read the version table (finding the schema current, they change nothing).
TABLE_GRANTS = {
    "audit_entries": ("SELECT", "INSERT"),
    "audit_chain_head": ("SELECT", "UPDATE"),
    "audit_log_positions": ("SELECT", "INSERT", "UPDATE"),
    VERSION_TABLE: ("SELECT",),
}


class GrantsConfig(Config):
    def load(self):
        super().load()
        self.SERVICE_DB_USER = env_str("AUDIT_SERVICE_DB_USER", DEFAULT_SERVICE_USER)
        self.SERVICE_DB_PASSWORD = env_str("AUDIT_SERVICE_DB_PASSWORD")

    def check(self):
        super().check()
        if not self.SQLALCHEMY_DATABASE_URI.startswith("postgresql"):
            raise ConfigError(
                "AUDIT_DATABASE_URL must name a PostgreSQL database: roles and grants are PostgreSQL's"
            )
        if not ROLE_NAME.fullmatch(self.SERVICE_DB_USER):
            raise ConfigError(
                "AUDIT_SERVICE_DB_USER must be a lower-case SQL name (a-z, 0-9, _), "
                f"got {self.SERVICE_DB_USER!r}"
            )
        if not self.SERVICE_DB_PASSWORD:
            raise ConfigError("AUDIT_SERVICE_DB_PASSWORD must be set: the password of AUDIT_SERVICE_DB_USER")


def grant_statements(role: str, password: str, database: str) -> list[sql.Composed]:
    """The role (made when missing) with exactly TABLE_GRANTS, in order."""
    name = sql.Identifier(role)
    statements = [
        # One deploy's tasks may start together: grants on one table at once
        # can fail ("tuple concurrently updated"), so they take turns.
        sql.SQL("SELECT pg_advisory_xact_lock({})").format(sql.Literal(GRANTS_LOCK_KEY)),
        sql.SQL(
            "DO $do$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN "
            "CREATE ROLE {}; END IF; END $do$"
        ).format(sql.Literal(role), name),
        # No SUPERUSER, REPLICATION or BYPASSRLS clause: CREATE ROLE leaves
        # them off, and naming them at all needs a superuser (RDS has none).
        sql.SQL("ALTER ROLE {} WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            name, sql.Literal(password)
        ),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), name),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(name),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(name),
        sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(name),
    ]
    for table, privileges in TABLE_GRANTS.items():
        statements.append(
            sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, privileges)), sql.Identifier(table), name
            )
        )
    return statements


def migrate_and_grant(config: GrantsConfig) -> None:
    app = create_app(config)
    migrate_and_seed(app, MIGRATIONS_DIR)
    with app.app_context(), db.engine.begin() as connection:
        raw = connection.connection.driver_connection
        database = raw.info.dbname
        for statement in grant_statements(config.SERVICE_DB_USER, config.SERVICE_DB_PASSWORD, database):
            raw.execute(statement)
    print(f"audit: the database is migrated; {config.SERVICE_DB_USER} may append and read entries only")


def main() -> None:
    run_main("audit.grants", GrantsConfig, migrate_and_grant)


if __name__ == "__main__":
    main()
