"""Analytics settings: the base service settings plus the consumer's topic,
group and liveness timings."""
from pms_common.config import ConfigError, ServiceConfig, env_float, env_int, env_str
from pms_common.events import DEAD_LETTER_TOPIC, PATIENT_TOPIC

CONSUMER_GROUP = "analytics-service"


class Config(ServiceConfig):
    SERVICE = "analytics"
    DEFAULT_PORT = 4002

    API_TITLE = "Analytics API"

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.validate()

    def load(self):
        self.PATIENT_TOPIC = env_str("ANALYTICS_TOPIC", PATIENT_TOPIC)
        self.DEAD_LETTER_TOPIC = env_str("ANALYTICS_DLQ_TOPIC", DEAD_LETTER_TOPIC)
        self.CONSUMER_GROUP = env_str("ANALYTICS_GROUP_ID", CONSUMER_GROUP)
        self.TOPIC_PARTITIONS = env_int("ANALYTICS_TOPIC_PARTITIONS", 3)
        # Most messages one database transaction takes.
        self.BATCH_SIZE = env_int("ANALYTICS_BATCH_SIZE", 500)
        # After a batch's first message, how long to gather more on top of what
        # its fetch brought. Tansu, the local broker, answers a fetch that finds
        # nothing only after FETCH_WAIT_MS, so what arrives meanwhile comes as
        # one batch: there a gather only adds lag. At 100 events/s a 30 ms
        # gather put P3's lag at p50 72-87 / p99 101-154 ms, against 42-48 /
        # 76-120 with none; under P2's load none cost 0.1-0.2 ms more consumer
        # CPU per event and as much again in PostgreSQL, more transactions
        # (2026-11-28). Kafka and MSK answer a fetch as soon as one event is
        # there: compose and the ECS task set 30 ms, or each event would be a
        # transaction. (A gather that stops after 5 ms without a new event
        # gave neither: Tansu's batches come in bursts further apart.)
        self.BATCH_WAIT_MS = env_int("ANALYTICS_BATCH_WAIT_MS", 0)
        # How long the broker may hold a fetch open. Kafka (and MSK) answers as
        # soon as data arrives, so there a long wait costs no lag. Tansu, the
        # local broker, answers a fetch that finds nothing (less than
        # fetch.min.bytes, 1 here: 64 KiB nearly doubled P3's lag) only after
        # the rest of the wait, when that is below 250 ms: there the wait adds
        # to an event's lag and sets how often the consumer asks, idle or not. Measured with
        # Tansu, the broker's CPU at 10 ms and at 50: 215 and 121 ms a second at
        # 100 events/s, 112 and 44 with the whole system idle (of 2 cores'
        # 2000); the lag at 50 ms: 10 ms more at p50, 19 more at p99 (at 500
        # ms the p50 lag was 134 ms).
        self.FETCH_WAIT_MS = env_int("ANALYTICS_FETCH_WAIT_MS", 50)
        # How long a counted event's id is kept to drop a redelivery of it:
        # longer than the topic keeps events (Kafka's and MSK's default is 7
        # days), so the store does not grow without bound.
        self.DEDUP_HOURS = env_float("ANALYTICS_DEDUP_HOURS", 8 * 24)
        self.HEARTBEAT_SECONDS = env_float("CONSUMER_HEARTBEAT_SECONDS", 2.0)
        self.CONSUMER_STALE_SECONDS = env_float("CONSUMER_STALE_SECONDS", 15.0)

    def validate(self):
        if not 0 < self.HEARTBEAT_SECONDS < self.CONSUMER_STALE_SECONDS:
            raise ConfigError("need 0 < CONSUMER_HEARTBEAT_SECONDS < CONSUMER_STALE_SECONDS, got "
                              f"{self.HEARTBEAT_SECONDS} and {self.CONSUMER_STALE_SECONDS}")
        if self.BATCH_SIZE < 1 or self.TOPIC_PARTITIONS < 1 or self.FETCH_WAIT_MS < 1:
            raise ConfigError("ANALYTICS_BATCH_SIZE, ANALYTICS_TOPIC_PARTITIONS and "
                              "ANALYTICS_FETCH_WAIT_MS must be at least 1")
        if self.DEDUP_HOURS <= 0:
            raise ConfigError(f"ANALYTICS_DEDUP_HOURS must be positive, got {self.DEDUP_HOURS}")
        if self.BATCH_WAIT_MS < 0:
            raise ConfigError(f"ANALYTICS_BATCH_WAIT_MS must not be negative, got {self.BATCH_WAIT_MS}")
        if not self.PATIENT_TOPIC or self.PATIENT_TOPIC == self.DEAD_LETTER_TOPIC:
            raise ConfigError("ANALYTICS_TOPIC must be set and differ from ANALYTICS_DLQ_TOPIC")
