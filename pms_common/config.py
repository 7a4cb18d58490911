"""Configuration from the environment, one way for every service.

A service's Config subclass names its own settings; the base reads what every
service has: environment mode, data folder, bind address, port, database URL.
Instances read the environment when created, so tests can set variables (or
pass overrides) before building an app.
"""
import os
from pathlib import Path
from urllib.parse import quote

DEV, PRODUCTION = "dev", "production"


class ConfigError(RuntimeError):
    """A required setting is missing or invalid: the process must not start."""


def env_str(name, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name, default):
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def env_float(name, default):
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def env_bool(name, default):
    raw = env_str(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def service_address(name, default_port):
    """host:port of another part, from <NAME>_HOST and <NAME>_PORT."""
    return f"{env_str(f'{name}_HOST', '127.0.0.1')}:{env_int(f'{name}_PORT', default_port)}"


def normalize_database_url(url):
    """Use psycopg 3 for PostgreSQL whichever spelling the URL has."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def database_url(service, data_dir):
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
        return (f"postgresql+psycopg://{credentials}@{host}:{env_int('DB_PORT', 5432)}"
                f"/{env_str('DB_NAME', service)}")
    return f"sqlite:///{Path(data_dir).resolve() / (service + '.db')}"


class ServiceConfig:
    """Settings every service has. Subclasses set SERVICE and DEFAULT_PORT."""

    SERVICE = None
    DEFAULT_PORT = None
    # flask-smorest: each HTTP service serves its OpenAPI document at /openapi.json
    # (the gateway publishes it as /api-docs/<service>); Swagger UI is the gateway's.
    API_VERSION = "1.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"

    def __init__(self, **overrides):
        self.ENV = env_str("PMS_ENV", DEV)
        if self.ENV not in (DEV, PRODUCTION):
            raise ConfigError(f"PMS_ENV must be '{DEV}' or '{PRODUCTION}', got {self.ENV!r}")
        self.DATA_DIR = env_str("PMS_DATA_DIR", "data")
        self.BIND_HOST = env_str("BIND_HOST", "127.0.0.1")
        self.PORT = env_int(f"{self.SERVICE.upper()}_PORT", self.DEFAULT_PORT)
        self.LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
        self.DATABASE_URL = database_url(self.SERVICE, self.DATA_DIR)
        self.KAFKA_BOOTSTRAP_SERVERS = env_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
        self.load()
        for key, value in overrides.items():
            setattr(self, key, value)
        # Derived last, so an overridden DATABASE_URL reaches Flask-SQLAlchemy.
        from .db import engine_options
        self.SQLALCHEMY_DATABASE_URI = normalize_database_url(self.DATABASE_URL)
        self.SQLALCHEMY_ENGINE_OPTIONS = engine_options(self.SQLALCHEMY_DATABASE_URI)

    def load(self):
        """Subclasses read their own settings here (before overrides apply)."""

    @property
    def is_dev(self):
        return self.ENV == DEV

    def ensure_data_dir(self):
        """Creates the data folder (and a SQLite file's folder) if missing."""
        Path(self.DATA_DIR).mkdir(parents=True, exist_ok=True)
        if self.SQLALCHEMY_DATABASE_URI.startswith("sqlite:///"):
            Path(self.SQLALCHEMY_DATABASE_URI[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
