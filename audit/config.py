"""Audit settings: the base web settings, the consumer's topic and group,
where the gateway writes its audit log, and how long entries are kept."""

from pms_common.config import ConfigError, WebConfig, audit_log_path, env_float, env_int, env_str
from pms_common.events import DEAD_LETTER_TOPIC, PATIENT_TOPIC
from pms_common.status import HEARTBEAT_SECONDS

CONSUMER_GROUP = "audit-service"
# Six years: HIPAA's retention of documentation (45 CFR 164.316(b)(2)).
DEFAULT_RETENTION_DAYS = 2190
DEFAULT_LOG_NAME = "gateway"


class Config(WebConfig):
    SERVICE = "audit"

    API_TITLE = "Audit API"

    def load(self):
        self.PATIENT_TOPIC = env_str("AUDIT_TOPIC", PATIENT_TOPIC)
        self.DEAD_LETTER_TOPIC = env_str("AUDIT_DLQ_TOPIC", DEAD_LETTER_TOPIC)
        self.CONSUMER_GROUP = env_str("AUDIT_GROUP_ID", CONSUMER_GROUP)
        self.TOPIC_PARTITIONS = env_int("AUDIT_TOPIC_PARTITIONS", 3)
        self.BATCH_SIZE = env_int("AUDIT_BATCH_SIZE", 500)
        self.BATCH_WAIT_MS = env_int("AUDIT_BATCH_WAIT_MS", 0)
        # An event's entry may come a few seconds late; a shorter wait costs
        # the broker a fetch each time (Tansu holds an empty fetch for its whole wait).
        self.FETCH_WAIT_MS = env_int("AUDIT_FETCH_WAIT_MS", 3000)
        self.AUDIT_LOG_PATH = audit_log_path()
        # The collector's position row: one per gateway log (several gateways, several names).
        self.AUDIT_LOG_NAME = env_str("AUDIT_LOG_NAME", DEFAULT_LOG_NAME)
        # How often the collector looks for new lines when it found none.
        self.COLLECT_INTERVAL_SECONDS = env_float("AUDIT_COLLECT_INTERVAL_SECONDS", 0.2)
        self.RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
        self.HEARTBEAT_SECONDS = env_float("CONSUMER_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)

    def check(self):
        super().check()
        if self.BATCH_SIZE < 1 or self.TOPIC_PARTITIONS < 1 or self.FETCH_WAIT_MS < 1:
            raise ConfigError(
                "AUDIT_BATCH_SIZE, AUDIT_TOPIC_PARTITIONS and AUDIT_FETCH_WAIT_MS must be at least 1"
            )
        if self.BATCH_WAIT_MS < 0:
            raise ConfigError(f"AUDIT_BATCH_WAIT_MS must not be negative, got {self.BATCH_WAIT_MS}")
        if self.RETENTION_DAYS < 1:
            raise ConfigError(f"AUDIT_RETENTION_DAYS must be at least 1, got {self.RETENTION_DAYS}")
        if self.COLLECT_INTERVAL_SECONDS <= 0:
            raise ConfigError(
                f"AUDIT_COLLECT_INTERVAL_SECONDS must be positive, got {self.COLLECT_INTERVAL_SECONDS}"
            )
        if not 0 < len(self.AUDIT_LOG_NAME) <= 200:
            raise ConfigError("AUDIT_LOG_NAME must be 1 to 200 characters")
        if not self.PATIENT_TOPIC or self.PATIENT_TOPIC == self.DEAD_LETTER_TOPIC:
            raise ConfigError("AUDIT_TOPIC must be set and differ from AUDIT_DLQ_TOPIC")
