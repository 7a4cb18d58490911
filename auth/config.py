"""Auth settings: the base web settings plus the signing key, token lifetime,
login throttle, production's first admin and argon2id's cost."""

import logging
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher

from pms_common.config import ConfigError, WebConfig, env_int, env_str

from .passwords import estimate, password_weakness

log = logging.getLogger(__name__)
MIN_SECRET_BYTES = 32  # HS256 wants a key at least as long as its 256-bit hash
# zxcvbn's guesses for the key: 10^30 (about 2^100) is beyond an offline search
# on one captured token; it scores random characters at about one digit each.
MIN_SECRET_GUESSES_LOG10 = 30
MAKE_A_KEY = "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
_argon2_defaults = PasswordHasher()


class Config(WebConfig):
    SERVICE = "auth"

    API_TITLE = "Auth Service"

    def load(self):
        self.JWT_SECRET = env_str("JWT_SECRET")
        self.JWT_TTL_SECONDS = env_int("JWT_TTL_SECONDS", 3600)
        self.LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
        # Per client address: higher, since a clinic's staff often share one (NAT).
        self.LOGIN_MAX_FAILURES_PER_CLIENT = env_int("LOGIN_MAX_FAILURES_PER_CLIENT", 20)
        self.LOGIN_WINDOW_SECONDS = env_int("LOGIN_WINDOW_SECONDS", 300)
        self.ADMIN_EMAIL = env_str("ADMIN_EMAIL")
        self.ADMIN_PASSWORD = env_str("ADMIN_PASSWORD")
        # argon2id cost; stored hashes made with other values are redone at the next login.
        self.ARGON2_TIME_COST = env_int("ARGON2_TIME_COST", _argon2_defaults.time_cost)
        self.ARGON2_MEMORY_KIB = env_int("ARGON2_MEMORY_KIB", _argon2_defaults.memory_cost)
        self.ARGON2_PARALLELISM = env_int("ARGON2_PARALLELISM", _argon2_defaults.parallelism)

    def check(self):
        super().check()
        for name in (
            "JWT_TTL_SECONDS",
            "LOGIN_MAX_FAILURES",
            "LOGIN_MAX_FAILURES_PER_CLIENT",
            "LOGIN_WINDOW_SECONDS",
            "ARGON2_TIME_COST",
            "ARGON2_MEMORY_KIB",
            "ARGON2_PARALLELISM",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if bool(self.ADMIN_EMAIL) != bool(self.ADMIN_PASSWORD):
            raise ConfigError("ADMIN_EMAIL and ADMIN_PASSWORD must be set together (or neither)")
        if self.ADMIN_PASSWORD:
            weakness = password_weakness(self.ADMIN_PASSWORD, self.ADMIN_EMAIL)
            if weakness:
                raise ConfigError(f"ADMIN_PASSWORD is too weak: {weakness}")
        self.check_secret()

    def check_secret(self):
        """JWT_SECRET, when set, must be long and random; production requires it."""
        if self.JWT_SECRET:
            if len(self.JWT_SECRET.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long ({MAKE_A_KEY})")
            if estimate(self.JWT_SECRET)["guesses_log10"] < MIN_SECRET_GUESSES_LOG10:
                raise ConfigError(
                    f"JWT_SECRET is too easy to guess (repeats, sequences or words); "
                    f"use random bytes ({MAKE_A_KEY})"
                )
        elif not self.is_dev:
            raise ConfigError(
                f"JWT_SECRET is required in production (at least {MIN_SECRET_BYTES} "
                f"random bytes, {MAKE_A_KEY})"
            )

    def signing_key(self):
        """The HS256 key: JWT_SECRET, or in dev mode a random key kept in
        <DATA_DIR>/auth/jwt-secret so tokens survive restarts."""
        self.check_secret()
        if self.JWT_SECRET:
            return self.JWT_SECRET.encode()
        return dev_secret(Path(self.DATA_DIR) / "auth" / "jwt-secret")


def dev_secret(path):
    """Reads the dev key, making it first if missing. Several gunicorn workers
    may start at once: the key is written to a private temporary file and
    linked into place, so a reader never sees half a key and the first writer wins."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(temporary, path)
            log.info("generated a dev JWT key", extra={"path": str(path)})
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    key = path.read_text().strip()
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{path} holds a key shorter than {MIN_SECRET_BYTES} bytes; delete it to have a new one made"
        )
    return key.encode()
