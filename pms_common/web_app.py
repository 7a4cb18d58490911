"""The Flask app of every HTTP service, wired one way.

A new HTTP part copies the shape of `patient/__init__.py`: module-level
`db`, `migrate` and `api` in its `extensions.py`, smorest blueprints in its
`resources.py`, and a `create_app(config=None)` that calls `create_web_app`
and then adds what only that part has (a gRPC client, a token signer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask_smorest import Api, Blueprint
from flask_sqlalchemy import SQLAlchemy

from .config import DEV_USER_EMAIL, DEV_USER_PASSWORD, WebConfig
from .db import check_database, instrument_engines
from .metrics import Collector, init_http_metrics
from .telemetry import instrument_web_app
from .web import (
    ErrorSchema,
    api_spec_options,
    database_outage_is_503,
    explain_http_errors,
    health_blueprint,
    init_request_context,
)


class Migrations:
    """A service's migrations (Flask-Migrate), set up on its app only when it
    migrates (pms_common.serve.migrate_and_seed): alembic, imported then, stays
    out of a server's long-lived processes."""

    def __init__(self, version_table: str) -> None:
        self.version_table = version_table  # each service its own: one DATABASE_URL may serve them all
        self.db: SQLAlchemy | None = None

    def init_app(self, app: Flask, db: SQLAlchemy) -> None:
        app.extensions[MIGRATIONS] = self
        self.db = db

    def use_alembic(self, app: Flask, directory: str | Path) -> None:
        """Flask-Migrate on the app: its upgrade, downgrade and `flask db`
        commands work on it from here on."""
        from flask_migrate import Migrate

        Migrate(app, self.db, directory=str(directory), version_table=self.version_table, compare_type=True)

    @staticmethod
    def apply(app: Flask, directory: str | Path) -> None:
        """Upgrades the app's database to the newest migration in `directory`."""
        from flask_migrate import upgrade

        app.extensions[MIGRATIONS].use_alembic(app, directory)
        with app.app_context():
            upgrade(directory=str(directory))


MIGRATIONS = "pms_migrations"


def create_web_app(
    config: WebConfig,
    *,
    import_name: str,
    db: SQLAlchemy,
    migrate: Migrations,
    api: Api,
    blueprints: Iterable[Blueprint],
    gateway_prefix: str,
    every_operation_needs_a_token: bool = True,
    health_checks: Mapping[str, Callable[[], object]] | None = None,
    metrics_collectors: Iterable[Collector] = (),
    metrics_folders: Iterable[str | Path] = (),
) -> Flask:
    """Checks the config, then builds the app: its settings, the database and
    migrations, the OpenAPI document served under `gateway_prefix`, the
    blueprints, request ids and access lines, the one error shape (with a
    message) for HTTP errors and database failures, /health (the database,
    plus `health_checks`), /metrics (requests per route, plus
    `metrics_collectors` and `metrics_folders`) and, with tracing configured,
    spans of its requests and SQL (pms_common.telemetry)."""
    config.check()
    app = Flask(import_name)
    app.config.from_object(config)
    app.config["API_SPEC_OPTIONS"] = {
        **api_spec_options(gateway_prefix, secured=every_operation_needs_a_token),
        "info": {"description": how_to_call(config)},
    }
    app.config["GATEWAY_PREFIX"] = gateway_prefix
    app.json.sort_keys = False  # type: ignore[attr-defined]  # fields keep their declared order
    db.init_app(app)
    migrate.init_app(app, db)
    api.ERROR_SCHEMA = ErrorSchema
    api.init_app(app)
    explain_http_errors(app, api)
    for blueprint in blueprints:
        api.register_blueprint(blueprint)
    name_operations(api)
    init_request_context(app)
    init_http_metrics(app, metrics_collectors, metrics_folders)
    instrument_web_app(app)
    with app.app_context():
        instrument_engines(db.engines.values())
    database_outage_is_503(app, db)
    app.register_blueprint(
        health_blueprint({"database": lambda: check_database(db.engine), **(health_checks or {})})
    )
    return app


def gateway_location(endpoint: str, **values: Any) -> str:
    """A Location header's path as a client of the gateway sees it (the part's
    own route under the prefix the gateway serves it at, e.g. /api)."""
    from flask import current_app, url_for

    return str(current_app.config["GATEWAY_PREFIX"]) + url_for(endpoint, **values)


def how_to_call(config: WebConfig) -> str:
    """The OpenAPI document's description: where a token comes from and how
    to send it (with the dev login outside production)."""
    text = (
        "Every operation but `/auth/login` needs a token: `POST /auth/login` with "
        '`{"email": ..., "password": ...}` answers `{"token": ...}`; send it as '
        "`Authorization: Bearer <token>` (in this page: **Authorize**, then paste the token). "
        "Reading needs any signed-in user; changing patients and managing users needs the ADMIN role."
    )
    if config.is_dev:
        text += (
            f" This is a development system: log in as `{DEV_USER_EMAIL}` / `{DEV_USER_PASSWORD}` (ADMIN)."
        )
    return text


def name_operations(api: Api) -> None:
    """Gives every operation without one an operationId made of its summary
    ("List patients" → `listPatients`), which clients generated from the
    document use as method names. A name already taken gets the operation's
    tag in front (`fhirUpdatePatient`), so names stay unique and the first
    operation registered keeps the plain one."""
    operations = [
        (method, operation)
        for path_operations in api.spec._paths.values()
        for method, operation in path_operations.items()
        if isinstance(operation, dict) and method != "parameters"
    ]
    taken = {operation["operationId"] for _, operation in operations if "operationId" in operation}
    for method, operation in operations:
        if "operationId" in operation:
            continue
        # Asides in brackets and apostrophes are not part of the name.
        summary = re.sub(r"\(.*?\)|'", "", operation.get("summary", method))
        words = [w for w in re.findall(r"[A-Za-z0-9]+", summary) if w.lower() not in ("a", "an", "the")]
        name = _camel_case(words)
        if name in taken:
            tag = (operation.get("tags") or [method])[0]
            name = _camel_case([*re.findall(r"[A-Za-z0-9]+", tag), *words])
        if name in taken:  # taken with the tag too: numbered, still unique
            suffix = 2
            while f"{name}{suffix}" in taken:
                suffix += 1
            name = f"{name}{suffix}"
        operation["operationId"] = name
        taken.add(name)


def _camel_case(words: list[str]) -> str:
    return words[0].lower() + "".join(word[:1].upper() + word[1:] for word in words[1:])


def migrate_web_app(
    create_app: Callable[[WebConfig], Flask], migrations_dir: str | Path
) -> Callable[[WebConfig], None]:
    """The `migrate` command's work for a Flask part: its migrations, no seed."""
    from .serve import migrate_and_seed

    def migrate(config: WebConfig) -> None:
        migrate_and_seed(create_app(config), migrations_dir)

    return migrate
