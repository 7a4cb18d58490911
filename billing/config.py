"""Billing settings: the base settings plus the gRPC pool, the shutdown grace
and the patient-event consumer."""

from pms_common.config import ConfigError, ServiceConfig, env_bool, env_float, env_int, env_str
from pms_common.events import PATIENT_TOPIC


class Config(ServiceConfig):
    SERVICE = "billing"

    def load(self):
        self.GRPC_MAX_WORKERS = env_int("GRPC_MAX_WORKERS", 16)
        # SIGTERM → NOT_SERVING, then in-flight calls get this long to finish.
        self.SHUTDOWN_GRACE_SECONDS = env_float("SHUTDOWN_GRACE_SECONDS", 10.0)
        # Consume patient events (closes the account of a deleted patient).
        self.EVENTS_ENABLED = env_bool("EVENTS_ENABLED", True)
        self.EVENTS_TOPIC = PATIENT_TOPIC
        self.EVENTS_GROUP_ID = env_str("EVENTS_GROUP_ID", "billing-service")
        # A close may wait a few seconds; a shorter wait costs the broker a
        # fetch each time (Tansu holds an empty fetch for its whole wait).
        self.EVENTS_FETCH_WAIT_MS = env_int("EVENTS_FETCH_WAIT_MS", 3000)

    def check(self):
        super().check()
        if self.EVENTS_FETCH_WAIT_MS < 1:
            raise ConfigError(f"EVENTS_FETCH_WAIT_MS must be at least 1, got {self.EVENTS_FETCH_WAIT_MS}")
        if self.GRPC_MAX_WORKERS < 1:
            raise ConfigError(f"GRPC_MAX_WORKERS must be at least 1, got {self.GRPC_MAX_WORKERS}")
        if self.SHUTDOWN_GRACE_SECONDS < 0:
            raise ConfigError(
                f"SHUTDOWN_GRACE_SECONDS must not be negative, got {self.SHUTDOWN_GRACE_SECONDS}"
            )
