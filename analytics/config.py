"""Analytics settings: the base web settings plus the consumer's topic,
group, batching and liveness timings."""

from pms_common.config import ConfigError, WebConfig, env_float, env_int, env_str, port_of
from pms_common.events import DEAD_LETTER_TOPIC, PATIENT_TOPIC
from pms_common.status import HEARTBEAT_SECONDS

CONSUMER_GROUP = "analytics-service"


class Config(WebConfig):
    SERVICE = "analytics"

    API_TITLE = "Analytics API"

    def load(self):
        self.CONSUMER_METRICS_PORT = port_of("ANALYTICS_CONSUMER_METRICS")  # analytics.consumer's metrics
        self.PATIENT_TOPIC = env_str("ANALYTICS_TOPIC", PATIENT_TOPIC)
        self.DEAD_LETTER_TOPIC = env_str("ANALYTICS_DLQ_TOPIC", DEAD_LETTER_TOPIC)
        self.CONSUMER_GROUP = env_str("ANALYTICS_GROUP_ID", CONSUMER_GROUP)
        self.TOPIC_PARTITIONS = env_int("ANALYTICS_TOPIC_PARTITIONS", 3)
        # Most messages one database transaction takes.
        self.BATCH_SIZE = env_int("ANALYTICS_BATCH_SIZE", 500)
        # After a batch's first message, how long to gather more on top of what
        # its fetch brought. None by default: Tansu, the local broker, already
        # hands over as one batch what arrives while a fetch waits, so a gather
        # only adds lag. Kafka and MSK answer a fetch as soon as one event is
        # there, so compose and the ECS task set a gather, or each event would
        # be a transaction (see bench/README.md, "Service kit figures").
        self.BATCH_WAIT_MS = env_int("ANALYTICS_BATCH_WAIT_MS", 0)
        # How long the broker may hold a fetch open. Kafka and MSK answer as
        # soon as data arrives, so there a long wait costs no lag; Tansu looks
        # again at halving intervals within it, so here it trades an event's
        # lag (up to about half the wait) against how often the consumer asks,
        # idle or not (bench/README.md, "Service kit figures" and "Idle").
        self.FETCH_WAIT_MS = env_int("ANALYTICS_FETCH_WAIT_MS", 200)
        # How long a counted event's id is kept to drop a redelivery of it:
        # longer than the topic keeps events (Kafka's and MSK's default is 7
        # days), so the store does not grow without bound.
        self.DEDUP_HOURS = env_float("ANALYTICS_DEDUP_HOURS", 8 * 24)
        self.HEARTBEAT_SECONDS = env_float("CONSUMER_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)
        self.CONSUMER_STALE_SECONDS = env_float("CONSUMER_STALE_SECONDS", 15.0)

    def check(self):
        super().check()
        if not 0 < self.HEARTBEAT_SECONDS < self.CONSUMER_STALE_SECONDS:
            raise ConfigError(
                "need 0 < CONSUMER_HEARTBEAT_SECONDS < CONSUMER_STALE_SECONDS, got "
                f"{self.HEARTBEAT_SECONDS} and {self.CONSUMER_STALE_SECONDS}"
            )
        if self.BATCH_SIZE < 1 or self.TOPIC_PARTITIONS < 1 or self.FETCH_WAIT_MS < 1:
            raise ConfigError(
                "ANALYTICS_BATCH_SIZE, ANALYTICS_TOPIC_PARTITIONS and "
                "ANALYTICS_FETCH_WAIT_MS must be at least 1"
            )
        if self.DEDUP_HOURS <= 0:
            raise ConfigError(f"ANALYTICS_DEDUP_HOURS must be positive, got {self.DEDUP_HOURS}")
        if self.BATCH_WAIT_MS < 0:
            raise ConfigError(f"ANALYTICS_BATCH_WAIT_MS must not be negative, got {self.BATCH_WAIT_MS}")
        if not self.PATIENT_TOPIC or self.PATIENT_TOPIC == self.DEAD_LETTER_TOPIC:
            raise ConfigError("ANALYTICS_TOPIC must be set and differ from ANALYTICS_DLQ_TOPIC")
