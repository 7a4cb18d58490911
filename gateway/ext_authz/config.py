"""ext_authz settings: the base settings plus where auth is and how long a
positive answer is reused."""

from pms_common.config import ConfigError, ServiceConfig, env_float, service_address


class Config(ServiceConfig):
    SERVICE = "ext_authz"

    def load(self):
        self.AUTH_URL = "http://" + service_address("AUTH")
        # A positive answer is reused this long at most (and never past the
        # token's expiry): the bound on how late a logout takes effect.
        self.CACHE_SECONDS = env_float("AUTHZ_CACHE_SECONDS", 2.0)
        self.AUTH_TIMEOUT_SECONDS = env_float("AUTHZ_AUTH_TIMEOUT_SECONDS", 1.0)

    def check(self):
        super().check()
        if self.CACHE_SECONDS < 0:
            raise ConfigError(f"AUTHZ_CACHE_SECONDS must not be negative, got {self.CACHE_SECONDS}")
        if self.AUTH_TIMEOUT_SECONDS <= 0:
            raise ConfigError(f"AUTHZ_AUTH_TIMEOUT_SECONDS must be positive, got {self.AUTH_TIMEOUT_SECONDS}")
