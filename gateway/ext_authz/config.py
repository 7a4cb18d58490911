from pms_common.config import ServiceConfig, env_float, service_address


class Config(ServiceConfig):
    SERVICE = "ext_authz"
    DEFAULT_PORT = 9002

    def load(self):
        self.AUTH_URL = "http://" + service_address("AUTH", 4005)
        # A positive answer is reused this long at most (and never past the
        # token's expiry): the bound on how late a logout takes effect.
        self.CACHE_SECONDS = env_float("AUTHZ_CACHE_SECONDS", 2.0)
        self.AUTH_TIMEOUT_SECONDS = env_float("AUTHZ_AUTH_TIMEOUT_SECONDS", 1.0)
