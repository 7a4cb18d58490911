"""Patient settings: the base web settings plus billing's address and the
outbox relay's pace."""

from pms_common.config import ConfigError, WebConfig, env_float, env_int, port_of, service_address
from pms_common.events import PATIENT_TOPIC

MIN_ORPHAN_AGE_SECONDS = 60


class Config(WebConfig):
    SERVICE = "patient"

    API_TITLE = "Patient Service"
    MAX_CONTENT_LENGTH = 64 * 1024

    def load(self):
        self.BILLING_ADDRESS = service_address("BILLING")
        # A create waits this long for billing; after that the worker opens the account.
        self.BILLING_TIMEOUT_SECONDS = env_float("BILLING_TIMEOUT_SECONDS", 1.0)
        self.BILLING_RETRY_MAX_SECONDS = env_float("BILLING_RETRY_MAX_SECONDS", 30.0)
        # The relay's pause after a batch that was not full, and so the most an
        # event waits here: under load it makes fewer, larger batches, which cost
        # the relay and the broker less per event.
        self.OUTBOX_POLL_SECONDS = env_float("OUTBOX_POLL_SECONDS", 0.03)
        self.WORKER_METRICS_PORT = port_of("PATIENT_WORKER_METRICS")  # patient.worker's Prometheus metrics
        self.OUTBOX_BATCH_SIZE = env_int("OUTBOX_BATCH_SIZE", 500)
        # The worker closes ACTIVE billing accounts at least this old that no
        # patient has (a create writes its patient within seconds of billing's
        # answer), going over all of them once per interval.
        self.ORPHAN_ACCOUNT_MIN_AGE_SECONDS = env_float("ORPHAN_ACCOUNT_MIN_AGE_SECONDS", 600.0)
        self.RECONCILE_INTERVAL_SECONDS = env_float("RECONCILE_INTERVAL_SECONDS", 600.0)
        self.EVENTS_TOPIC = PATIENT_TOPIC

    def check(self):
        super().check()
        if self.BILLING_TIMEOUT_SECONDS <= 0:
            raise ConfigError(f"BILLING_TIMEOUT_SECONDS must be positive, got {self.BILLING_TIMEOUT_SECONDS}")
        if self.OUTBOX_BATCH_SIZE < 1:
            raise ConfigError(f"OUTBOX_BATCH_SIZE must be at least 1, got {self.OUTBOX_BATCH_SIZE}")
        if self.ORPHAN_ACCOUNT_MIN_AGE_SECONDS < MIN_ORPHAN_AGE_SECONDS:
            raise ConfigError(
                f"ORPHAN_ACCOUNT_MIN_AGE_SECONDS must be at least {MIN_ORPHAN_AGE_SECONDS} (a younger "
                f"account may belong to a create still in flight), got {self.ORPHAN_ACCOUNT_MIN_AGE_SECONDS}"
            )
        if self.RECONCILE_INTERVAL_SECONDS <= 0:
            raise ConfigError(
                f"RECONCILE_INTERVAL_SECONDS must be positive, got {self.RECONCILE_INTERVAL_SECONDS}"
            )
        for name in ("BILLING_RETRY_MAX_SECONDS", "OUTBOX_POLL_SECONDS"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
