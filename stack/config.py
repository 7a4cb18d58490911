"""What `make run` reads: every part's port (pms_common.config.PARTS), its
run and data folders, the environment mode and how long parts may take to
become healthy. The parts read their own settings; the launcher passes its
environment on to them, with the ports and folders it chose."""

import random
import socket
from pathlib import Path

from pms_common.config import (
    LOOPBACK,
    PARTS,
    ConfigError,
    Environ,
    audit_trail_on,
    env_float,
    env_log_level,
    env_mode,
    env_str,
    port_of,
)

ROOT = Path(__file__).resolve().parent.parent
# The parts that may run as several copies (PMS_COPIES), each with the
# service whose database it uses: the gateway balances over the copies of a
# part with a port, and the outbox relays and consumers (each copy's own,
# stack.parts) share their work.
COPYABLE = {"patient": "patient", "analytics": "analytics", "billing": "billing"}


def copies_setting(environ: Environ | None = None) -> dict[str, int]:
    """PMS_COPIES: part name → how many copies run (`patient=2,billing=2`);
    a part not named runs once."""
    copies = {}
    for item in filter(None, (item.strip() for item in env_str("PMS_COPIES", "", environ).split(","))):
        name, equals, count = item.partition("=")
        if not equals or not count.strip().isdigit():
            raise ConfigError(
                f"PMS_COPIES must list part=count pairs, comma-separated (patient=2,billing=2), got {item!r}"
            )
        copies[name.strip()] = int(count)
    return copies


def uses_postgres(service: str, environ: Environ | None = None) -> bool:
    """Whether the service's database is PostgreSQL (pms_common.config.database_url's order)."""
    url = env_str(f"{service.upper()}_DATABASE_URL", None, environ) or env_str("DATABASE_URL", None, environ)
    return url.startswith("postgres") if url else env_str("DB_HOST", None, environ) is not None


class StackConfig:
    def __init__(self, environ: Environ | None = None) -> None:
        # Port setting (PATIENT_PORT, ...) → port.
        self.ports = {address.port_setting: port_of(prefix, environ) for prefix, address in PARTS.items()}
        self.RUN_DIR = Path(env_str("PMS_RUN_DIR", str(ROOT / ".run"), environ)).resolve()
        self.DATA_DIR = Path(env_str("PMS_DATA_DIR", str(ROOT / "data"), environ)).resolve()
        self.ENV = env_mode(environ)
        self.READY_TIMEOUT_SECONDS = env_float("PMS_READY_TIMEOUT", 180.0, environ)
        self.LOG_LEVEL = env_log_level(environ)
        self.COPIES = copies_setting(environ)
        self.AUDIT_TRAIL = audit_trail_on(environ)
        self._postgres = {service: uses_postgres(service, environ) for service in set(COPYABLE.values())}

    def check(self) -> None:
        if self.READY_TIMEOUT_SECONDS <= 0:
            raise ConfigError(f"PMS_READY_TIMEOUT must be positive, got {self.READY_TIMEOUT_SECONDS}")
        taken = {}
        for name, port in self.ports.items():
            if port in taken:
                raise ConfigError(
                    f"{name} and {taken[port]} are both {port}: each part needs a port of its own"
                )
            taken[port] = name
        for name, count in self.COPIES.items():
            if name not in COPYABLE:
                raise ConfigError(
                    f"PMS_COPIES: {name!r} runs as one copy; these may run as several: {', '.join(COPYABLE)}"
                )
            if count < 1:
                raise ConfigError(f"PMS_COPIES: {name} needs at least 1 copy, got {count}")
            service = COPYABLE[name]
            if count > 1 and not self._postgres[service]:
                raise ConfigError(
                    f"PMS_COPIES: several copies of {name} need PostgreSQL (DATABASE_URL or "
                    f"{service.upper()}_DATABASE_URL): SQLite is one file, for one copy on one host"
                )


def ephemeral_ports_start(range_file="/proc/sys/net/ipv4/ip_local_port_range"):
    try:
        with open(range_file) as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(taken=frozenset()):
    """A port nothing listens on and not in `taken` (the ports already
    chosen for servers not yet started), for a server started next. Taken
    below the kernel's ephemeral range: a port the kernel hands out for port
    0 can be taken by any outgoing connection before the server binds it, and
    the server then fails to start; one below that range cannot be."""
    start = ephemeral_ports_start()
    for _ in range(200):
        # A port, not a secret.
        port = random.randrange(max(1024, start - 12000), start)  # nosec B311
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue  # in use: another
            return port
    raise OSError("no free port below the ephemeral range")


def free_ports(settings):
    """{setting: a free port} with a different port for each setting."""
    chosen: dict[str, int] = {}
    for setting in settings:
        chosen[setting] = free_port(taken=set(chosen.values()))
    return chosen
