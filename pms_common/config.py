"""Configuration from the environment, one way for every part.

This module is the only code that reads the environment. It holds what more
than one part needs to agree on: where every part listens (PARTS), the dev
login, and the settings every service has (ServiceConfig; WebConfig for an
HTTP service). Instances read the environment when created, so tests can set
variables (or pass overrides) before building an app.

A new part copies `config.py` from an existing one: `class Config(ServiceConfig)`
(or `WebConfig`) naming SERVICE, its row in PARTS, its own settings read in
`load()` with the `env_*` helpers, and the rules its values must meet in
`check()` (extending the base's). `pms_common.entry.run_main` and
`create_web_app` call `check()`; a broken rule is a ConfigError naming the
setting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload
from urllib.parse import quote, urlencode

DEV, PRODUCTION = "dev", "production"
PRIVATE_DIR_MODE = 0o700
LOOPBACK = "127.0.0.1"
# The databases the services have drivers for, as normalize_database_url spells them.
DATABASE_SCHEMES = ("postgresql+psycopg", "sqlite")
# The Java original's fixture: auth seeds it in dev mode only, `make run` prints it.
DEV_USER_EMAIL = "testuser@test.com"
DEV_USER_PASSWORD = "password123"  # nosec B105  (a documented dev login, never seeded in production)
# A mapping to read settings from instead of this process's environment (the
# launcher renders the gateway for the environment it gives its parts).
Environ = Mapping[str, str]
NumberT = TypeVar("NumberT", int, float)


# Where a web service's background loops run (WebConfig.BACKGROUND_LOOPS).
BACKGROUND_APART, BACKGROUND_BESIDE = "apart", "beside"


class ConfigError(RuntimeError):
    """A required setting is missing or invalid: the process must not start."""


@dataclass(frozen=True)
class PartAddress:
    """Where a part listens: <PREFIX>_PORT sets its port; a part that other
    parts connect to is found at <PREFIX>_HOST (loopback by default)."""

    prefix: str
    default_port: int
    reached_by_other_parts: bool = True

    @property
    def port_setting(self) -> str:
        return f"{self.prefix}_PORT"

    @property
    def host_setting(self) -> str | None:
        return f"{self.prefix}_HOST" if self.reached_by_other_parts else None


# Every listening part, by its settings' prefix (a service's is SERVICE
# upper-cased), with its default port: the Java original's where it had one.
PARTS: dict[str, PartAddress] = {
    address.prefix: address
    for address in (
        PartAddress("GATEWAY", 4004, reached_by_other_parts=False),
        PartAddress("PATIENT", 4000),
        PartAddress("AUTH", 4005),
        PartAddress("ANALYTICS", 4002),
        PartAddress("AUDIT", 4006),
        PartAddress("BILLING", 9001),
        PartAddress("EXT_AUTHZ", 9002),
        PartAddress("BROKER", 9092, reached_by_other_parts=False),
        PartAddress("ENVOY_ADMIN", 9901, reached_by_other_parts=False),
        # Prometheus metrics of the processes without an HTTP port of their own.
        PartAddress("BILLING_METRICS", 9101, reached_by_other_parts=False),
        PartAddress("EXT_AUTHZ_METRICS", 9102, reached_by_other_parts=False),
        PartAddress("PATIENT_WORKER_METRICS", 9103, reached_by_other_parts=False),
        PartAddress("ANALYTICS_CONSUMER_METRICS", 9104, reached_by_other_parts=False),
    )
}


def audit_log_path(environ: Environ | None = None) -> str:
    """AUDIT_LOG_PATH, else audit/gateway-audit.jsonl in PMS_DATA_DIR: where
    the gateway writes one JSON line per request and the audit part's
    collector reads them (both must agree; compose shares the folder)."""
    default = Path(env_str("PMS_DATA_DIR", "data", environ)).resolve() / "audit" / "gateway-audit.jsonl"
    return env_str("AUDIT_LOG_PATH", str(default), environ)


def audit_trail_on(environ: Environ | None = None) -> bool:
    """AUDIT_TRAIL (on by default): off, the launcher runs no audit part and
    the gateway writes no audit log. It exists to measure what the trail
    costs (bench); production refuses it (gateway.render's check)."""
    return env_bool("AUDIT_TRAIL", True, environ)


def process_environment() -> dict[str, str]:
    """A copy of this process's environment, for a launcher to pass on to the
    processes it starts."""
    return dict(os.environ)


def set_for_libraries(name: str, value: str) -> None:
    """Sets a variable of this process's environment for a library that reads
    its setting there (prometheus_client's PROMETHEUS_MULTIPROC_DIR)."""
    os.environ[name] = value


@overload
def env_str(name: str, default: str, environ: Environ | None = None) -> str: ...
@overload
def env_str(name: str, default: None = None, environ: Environ | None = None) -> str | None: ...
def env_str(name: str, default: str | None = None, environ: Environ | None = None) -> str | None:
    """The setting's text; an unset or empty variable gives the default."""
    value = (os.environ if environ is None else environ).get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int, environ: Environ | None = None) -> int:
    return _env_number(name, default, int, "a whole number", environ)


def env_float(name: str, default: float, environ: Environ | None = None) -> float:
    return _env_number(name, default, float, "a number", environ)


def _env_number(
    name: str, default: NumberT, parse: Callable[[str], NumberT], kind: str, environ: Environ | None
) -> NumberT:
    raw = env_str(name, environ=environ)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None


def env_bool(name: str, default: bool, environ: Environ | None = None) -> bool:
    raw = env_str(name, environ=environ)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_mode(environ: Environ | None = None) -> str:
    """PMS_ENV: dev (the default) or production."""
    mode = env_str("PMS_ENV", DEV, environ)
    if mode not in (DEV, PRODUCTION):
        raise ConfigError(f"PMS_ENV must be '{DEV}' or '{PRODUCTION}', got {mode!r}")
    return mode


def env_log_level(environ: Environ | None = None) -> str:
    """LOG_LEVEL, upper-cased: one of logging's level names (INFO by default)."""
    level = env_str("LOG_LEVEL", "INFO", environ).upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    return level


def port_of(prefix: str, environ: Environ | None = None) -> int:
    """The port a part listens on: <PREFIX>_PORT, else its default in PARTS."""
    address = PARTS[prefix]
    raw = env_str(address.port_setting, environ=environ)
    if raw is None:
        return address.default_port
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{address.port_setting} must be a port number (1-65535), got {raw!r}")
    return int(raw)


def service_address(prefix: str, environ: Environ | None = None) -> str:
    """host:port of another part, from <PREFIX>_HOST and <PREFIX>_PORT."""
    host_setting = PARTS[prefix].host_setting
    if host_setting is None:
        raise ValueError(f"no part connects to {prefix} by name")
    return f"{env_str(host_setting, LOOPBACK, environ)}:{port_of(prefix, environ)}"


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whichever spelling the URL has."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def database_url(service: str, data_dir: str) -> str:
    """<SERVICE>_DATABASE_URL, else DATABASE_URL, else DB_HOST/DB_USER/... (as
    ECS passes an RDS secret), else a SQLite file in the data folder."""
    url = env_str(f"{service.upper()}_DATABASE_URL") or env_str("DATABASE_URL")
    if url:
        return normalize_database_url(url)
    host = env_str("DB_HOST")
    if host:
        user = quote(env_str("DB_USER", "postgres"), safe="")
        password = env_str("DB_PASSWORD")
        credentials = f"{user}:{quote(password, safe='')}" if password else user
        url = (
            f"postgresql+psycopg://{credentials}@{host}:{env_int('DB_PORT', 5432)}"
            f"/{env_str('DB_NAME', service)}"
        )
        # TLS to the database: DB_SSLMODE (verify-full on RDS) and the CA bundle that verifies it.
        tls = {
            key: value
            for key, value in (("sslmode", env_str("DB_SSLMODE")), ("sslrootcert", env_str("DB_SSLROOTCERT")))
            if value
        }
        return f"{url}?{urlencode(tls)}" if tls else url
    return f"sqlite:///{Path(data_dir).resolve() / (service + '.db')}"


def prepare_data_dir(data_dir: str, database_uri: str) -> None:
    """Creates the data folder (and a SQLite file's folder) if missing,
    readable by its owner only, and the SQLite file owner-only too: they hold
    patient records and the dev signing key."""
    folder = Path(data_dir)
    folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    folder.chmod(PRIVATE_DIR_MODE)  # mkdir leaves an existing folder as it was
    if database_uri.startswith("sqlite:///") and ":memory:" not in database_uri:
        from .db import make_sqlite_file_private

        database = Path(database_uri[len("sqlite:///") :].partition("?")[0])
        # A folder of someone else's choosing (say /tmp) is made if missing, never tightened.
        database.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        make_sqlite_file_private(database)


class ServiceConfig:
    """Settings every service has. A subclass sets SERVICE (its prefix in
    PARTS, lower-cased), reads its own settings in load() and extends check()."""

    SERVICE: ClassVar[str]

    def __init__(self, **overrides: Any) -> None:
        self.load_shared()
        self.load()
        for key, value in overrides.items():
            setattr(self, key, value)
        # Derived last, so an overridden DATABASE_URL reaches Flask-SQLAlchemy.
        from .db import database_binds, engine_options

        self.SQLALCHEMY_DATABASE_URI = normalize_database_url(self.DATABASE_URL)
        self.SQLALCHEMY_ENGINE_OPTIONS = engine_options(self.SQLALCHEMY_DATABASE_URI)
        self.SQLALCHEMY_BINDS = database_binds(self.SQLALCHEMY_DATABASE_URI)

    def load_shared(self) -> None:
        """The settings every service of this kind reads (before its own)."""
        self.ENV = env_mode()
        self.DATA_DIR = env_str("PMS_DATA_DIR", "data")
        self.BIND_HOST = env_str("BIND_HOST", LOOPBACK)
        self.PORT = port_of(self.SERVICE.upper())
        # A part without HTTP serves its Prometheus metrics here (pms_common.metrics).
        metrics_prefix = f"{self.SERVICE.upper()}_METRICS"
        self.METRICS_PORT = port_of(metrics_prefix) if metrics_prefix in PARTS else None
        self.LOG_LEVEL = env_log_level()
        self.DATABASE_URL = database_url(self.SERVICE, self.DATA_DIR)
        self.KAFKA_BOOTSTRAP_SERVERS = env_str(
            "KAFKA_BOOTSTRAP_SERVERS", f"{LOOPBACK}:{PARTS['BROKER'].default_port}"
        )
        # Which copy of the part this process is when the launcher runs several
        # (stack's PMS_COPIES), 1 when it runs alone: it names the status file.
        self.COPY = env_int("PMS_COPY", 1)

    def load(self) -> None:
        """Subclasses read their own settings here (before overrides apply)."""

    def check(self) -> None:
        """Refuses values the part must not run with (ConfigError naming the
        setting). Subclasses extend it, calling super().check() first."""
        scheme = self.SQLALCHEMY_DATABASE_URI.partition(":")[0]
        if scheme not in DATABASE_SCHEMES:
            # Named by its scheme only: the rest of the URL may hold a password.
            raise ConfigError(
                f"DATABASE_URL (or {self.SERVICE.upper()}_DATABASE_URL) must be a PostgreSQL "
                f"or SQLite URL, got a {scheme!r} URL"
            )
        if self.COPY < 1:
            raise ConfigError(f"PMS_COPY must be at least 1, got {self.COPY}")

    @property
    def is_dev(self) -> bool:
        return self.ENV == DEV

    def ensure_data_dir(self) -> None:
        """The data folder and SQLite file, made private (prepare_data_dir)."""
        prepare_data_dir(self.DATA_DIR, self.SQLALCHEMY_DATABASE_URI)


class WebConfig(ServiceConfig):
    """Settings every HTTP service has besides the base ones: its OpenAPI
    document (flask-smorest) and gunicorn's pool. A subclass sets API_TITLE."""

    API_TITLE: ClassVar[str]
    # A request body larger than this is refused with 413 before it is parsed.
    MAX_CONTENT_LENGTH = 16 * 1024
    # Each HTTP service serves its OpenAPI document at /openapi.json (the
    # gateway publishes it as /api-docs/<service>); Swagger UI is the gateway's.
    API_VERSION = "1.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"

    def load_shared(self) -> None:
        super().load_shared()
        self.WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 2)  # gunicorn worker processes
        self.WEB_THREADS = env_int("WEB_THREADS", 4)  # threads per worker
        # The service's background loops (its outbox relay, consumers):
        # `apart`, each run by its own command (a container of its own), or
        # `beside`, forked by gunicorn's master beside its workers, sharing
        # their pages (what `make run` does on one machine; pms_common.serve).
        self.BACKGROUND_LOOPS = env_str("BACKGROUND_LOOPS", BACKGROUND_APART)

    def check(self) -> None:
        super().check()
        for name in ("WEB_CONCURRENCY", "WEB_THREADS"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.BACKGROUND_LOOPS not in (BACKGROUND_APART, BACKGROUND_BESIDE):
            raise ConfigError(
                f"BACKGROUND_LOOPS must be '{BACKGROUND_APART}' or '{BACKGROUND_BESIDE}', "
                f"got {self.BACKGROUND_LOOPS!r}"
            )
