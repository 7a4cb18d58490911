"""The data layer is one kit in pms_common, used the same way by every part:
one clock and one aware-UTC timestamp type (pms_common.models), one engine
setup and one way to run a statement in autocommit (pms_common.db), models in
SQLAlchemy 2.0's Mapped style, and migrations that still build exactly the
models' schema."""

import ast
import importlib
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from pms_common.db import (
    AUTOCOMMIT_BIND,
    autocommit_connection,
    create_engine,
    database_binds,
    engine_options,
)
from pms_common.models import UtcDateTime, utcnow
from tests.auth.helpers import JWT_SECRET
from tests.support import migrated_apps

ROOT = Path(__file__).resolve().parents[1]
# PostgreSQL's trigram index on names (patient migration 0002) is beyond what
# the models declare: SQLite, which the models also describe, has no such index.
INDEXES_ONLY_IN_MIGRATIONS = {"ix_patients_name_trgm"}
PARTS = ("patient", "auth", "analytics", "billing", "audit")
SERVICE_CODE = ("pms_common", *PARTS, "gateway", "stack", "bench")
# Each concern's one home; any other file doing it by hand is a second way.
ONE_PLACE = {
    "a clock (datetime.now)": (re.compile(r"\bdatetime\.now\("), {"pms_common/models.py"}),
    "a column type of its own (TypeDecorator)": (re.compile(r"\bTypeDecorator\b"), {"pms_common/models.py"}),
    "an engine of its own (sqlalchemy.create_engine)": (
        re.compile(r"\bsa\.create_engine\(|from sqlalchemy import [^\n]*\bcreate_engine\b"),
        {"pms_common/db.py"},
    ),
    "autocommit by hand (isolation_level)": (re.compile(r"\bisolation_level\b"), {"pms_common/db.py"}),
}
EVENTS = sa.Table(
    "data_layer_events",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UtcDateTime),
)


def service_files():
    for package in SERVICE_CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/protos/" not in relative and "/versions/" not in relative:
                yield relative, path.read_text()


@pytest.mark.parametrize("concern", sorted(ONE_PLACE))
def test_each_concern_of_the_data_layer_is_done_in_one_place(concern):
    pattern, homes = ONE_PLACE[concern]
    elsewhere = [name for name, text in service_files() if pattern.search(text) and name not in homes]
    assert elsewhere == [], f"{concern} outside {sorted(homes)}: {elsewhere}"


@pytest.mark.parametrize("part", PARTS)
def test_every_model_is_declared_in_the_mapped_style(part):
    """Columns are `name: Mapped[...] = mapped_column(...)`, never a bare
    Column or a Core Table."""
    tree = ast.parse((ROOT / part / "models.py").read_text())
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not calls & {"Column", "Table"}, f"{part}/models.py builds a Column or a Table"
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    unannotated = [
        f"{cls.name}.{target.id}"
        for cls in classes
        for statement in cls.body
        if isinstance(statement, ast.Assign)
        and isinstance(statement.value, ast.Call)
        and getattr(statement.value.func, "id", None) == "mapped_column"
        for target in statement.targets
    ]
    assert classes and not unannotated, unannotated


def test_utcnow_is_aware_and_in_utc():
    now = utcnow()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)


def test_timestamps_come_back_aware_in_utc_and_a_naive_one_is_refused(database_url):
    engine = create_engine(database_url)
    try:
        EVENTS.create(engine)
        noon_in_paris = datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":  # PostgreSQL answers in the session's zone
                connection.execute(sa.text("SET TIME ZONE 'America/New_York'"))
            connection.execute(sa.insert(EVENTS), [{"id": 1, "at": noon_in_paris}, {"id": 2, "at": None}])
            stored = dict(connection.execute(sa.select(EVENTS.c.id, EVENTS.c.at)).all())
        assert stored == {1: noon_in_paris, 2: None}
        assert stored[1].tzinfo == UTC and stored[1].hour == 10
        with pytest.raises(sa.exc.StatementError, match="aware"), engine.begin() as connection:
            connection.execute(sa.insert(EVENTS), {"id": 3, "at": datetime(2024, 6, 1, 12, 0)})
    finally:
        EVENTS.drop(engine, checkfirst=True)
        engine.dispose()


def test_an_engine_built_outside_flask_is_set_up_as_flask_sqlalchemys(database_url):
    url = database_url.replace("postgresql+psycopg://", "postgresql://")  # normalised as a part's config does
    engine, transactional = create_engine(url, autocommit=True), create_engine(url)
    try:
        assert engine.dialect.driver in ("psycopg", "pysqlite")
        assert engine.hide_parameters and transactional.hide_parameters
        EVENTS.create(transactional)
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                assert connection.scalar(sa.text("PRAGMA journal_mode")) == "wal"
            connection.execute(sa.insert(EVENTS), {"id": 1, "at": utcnow()})
            connection.rollback()  # nothing to roll back: the INSERT committed by itself
        with transactional.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(EVENTS)) == 1
    finally:
        EVENTS.drop(transactional, checkfirst=True)
        engine.dispose()
        transactional.dispose()


def dbapi_autocommit(connection):
    """Whether the driver connection commits each statement by itself."""
    dbapi_connection = connection.connection.dbapi_connection
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        return dbapi_connection.isolation_level is None
    return dbapi_connection.autocommit is True


def test_autocommit_connections_come_from_a_pool_that_stays_in_autocommit(database_url):
    """With database_binds (PostgreSQL) one statement runs on the autocommit
    pool and no connection of the main pool ever changes its mode; SQLite has
    no such pool, and its connection is switched back when it is returned."""
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(database_url),
        SQLALCHEMY_BINDS=database_binds(database_url),
    )
    db = SQLAlchemy(app)
    with app.app_context():
        try:
            on_postgresql = db.engine.dialect.name == "postgresql"
            assert (AUTOCOMMIT_BIND in db.engines) is on_postgresql
            with autocommit_connection(db) as connection:
                assert dbapi_autocommit(connection)
                assert (connection.engine is db.engines.get(AUTOCOMMIT_BIND)) is on_postgresql
                assert connection.scalar(sa.text("SELECT 1")) == 1
            with db.engine.connect() as connection:
                assert not dbapi_autocommit(connection)
        finally:
            for engine in db.engines.values():
                engine.dispose()


@pytest.mark.filterwarnings("ignore:.*expression-based index")  # SQLite cannot reflect lower(name)
def test_flask_parts_migrations_build_exactly_their_models(database_url, tmp_path):
    """What an alembic autogenerate would find for each Flask part after its
    migrations ran: nothing (billing checks its own in tests/billing)."""
    import analytics
    import auth
    import patient
    from analytics.config import Config as AnalyticsConfig
    from auth.config import Config as AuthConfig
    from patient.config import Config as PatientConfig

    parts = [
        (patient, PatientConfig, {}),
        (analytics, AnalyticsConfig, {}),
        (auth, AuthConfig, {"JWT_SECRET": JWT_SECRET}),
    ]
    for part, config_class, settings in parts:
        extensions = importlib.import_module(f"{part.__name__}.extensions")
        with migrated_apps(part.create_app, part.MIGRATIONS_DIR, extensions.db) as build:
            app = build(config_class(DATABASE_URL=database_url, DATA_DIR=str(tmp_path / "data"), **settings))
            with app.app_context(), extensions.db.engine.connect() as connection:
                version_table = app.extensions["migrate"].configure_args["version_table"]
                own_tables = set(extensions.db.metadata.tables) | {version_table}

                def own(name, type_, _parents, tables=own_tables):
                    return name in tables if type_ == "table" else name not in INDEXES_ONLY_IN_MIGRATIONS

                context = MigrationContext.configure(
                    connection,
                    opts={"version_table": version_table, "compare_type": True, "include_name": own},
                )
                assert compare_metadata(context, extensions.db.metadata) == [], part.__name__
