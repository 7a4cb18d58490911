"""Kafka client settings and helpers shared by the producer (patient's outbox
relay) and the consumers (analytics, billing). librdkafka with the defaults joins a
consumer group slowly on small brokers; these settings keep it to seconds.

A part builds its clients from `producer_config` / `consumer_config` (a
consumer usually through pms_common.consumer, which does it) and supplies only
its own extras; `ensure_topics` creates what a part is allowed to create.

How clients authenticate and how durable new topics are is a `KafkaSettings`:
plaintext and one replica by default (the local broker), IAM over TLS and
three replicas on Amazon MSK (the ECS tasks set KAFKA_SECURITY=iam,
AWS_REGION, KAFKA_REPLICATION_FACTOR and KAFKA_MIN_INSYNC_REPLICAS)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from .config import ConfigError, env_int, env_str

log = logging.getLogger(__name__)

PLAINTEXT, IAM = "plaintext", "iam"


@dataclass(frozen=True)
class KafkaSettings:
    """How clients reach the brokers, and how many copies a new topic keeps."""

    security: str = PLAINTEXT
    region: str | None = None
    replication_factor: int = 1
    min_insync_replicas: int | None = None

    def __post_init__(self) -> None:
        if self.security not in (PLAINTEXT, IAM):
            raise ConfigError(f"KAFKA_SECURITY must be '{PLAINTEXT}' or '{IAM}', got {self.security!r}")
        if self.security == IAM and not self.region:
            raise ConfigError("KAFKA_SECURITY=iam needs AWS_REGION, the region of the MSK cluster")
        if self.replication_factor < 1:
            raise ConfigError(f"KAFKA_REPLICATION_FACTOR must be at least 1, got {self.replication_factor}")
        minimum = self.min_insync_replicas
        if minimum is not None and not 1 <= minimum <= self.replication_factor:
            raise ConfigError(
                "KAFKA_MIN_INSYNC_REPLICAS must be between 1 and KAFKA_REPLICATION_FACTOR, "
                f"got {self.min_insync_replicas} and {self.replication_factor}"
            )

    @classmethod
    def from_env(cls) -> KafkaSettings:
        return cls(
            security=env_str("KAFKA_SECURITY", PLAINTEXT).lower(),
            # Needed only with KAFKA_SECURITY=iam, which __post_init__ checks.
            region=env_str("AWS_REGION", "") or env_str("AWS_DEFAULT_REGION", "") or None,
            replication_factor=env_int("KAFKA_REPLICATION_FACTOR", 1),
            min_insync_replicas=env_int("KAFKA_MIN_INSYNC_REPLICAS", 0) or None,
        )

    def client_config(self) -> dict[str, Any]:
        """The librdkafka settings every client (producer, consumer, admin) needs."""
        # No client metrics pushed to the broker (KIP-714): ours are Prometheus's,
        # and with it on each client asks for a subscription every few seconds.
        common = {"enable.metrics.push": False}
        if self.security == PLAINTEXT:
            return common
        return {
            **common,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "OAUTHBEARER",
            "oauth_cb": msk_iam_token_callback(self.region),
        }

    def topic_config(self) -> dict[str, str]:
        """Settings of a topic this client creates."""
        return {"min.insync.replicas": str(self.min_insync_replicas)} if self.min_insync_replicas else {}


def msk_iam_token_callback(region: str | None) -> Callable[[str], tuple[str, float]]:
    """librdkafka's oauth_cb for MSK IAM authentication: a token signed with the
    credentials of the task's role, and when it expires in seconds since the epoch.
    The client calls it on its own background thread, before it connects and
    again before the token expires."""
    # Imported here: only a client that talks to MSK needs the signer (and boto3).
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    def oauth_cb(_oauth_config: str) -> tuple[str, float]:
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
        return token, expiry_ms / 1000

    return oauth_cb


def producer_config(
    bootstrap_servers: str, *, settings: KafkaSettings | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap_servers,
        "acks": "all",
        "linger.ms": 2,
        # A message not acknowledged within this time fails its delivery
        # callback; the outbox keeps it and sends it again later.
        "message.timeout.ms": 10000,
        "socket.connection.setup.timeout.ms": 3000,
        "reconnect.backoff.max.ms": 1000,
        **(settings or KafkaSettings.from_env()).client_config(),
        **extra,
    }


def consumer_config(
    bootstrap_servers: str, group_id: str, *, settings: KafkaSettings | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A member that stops heartbeating loses its partitions after 6 s; it
        # heartbeats three times within that (Kafka's rule), each a request
        # the broker answers however idle the group is.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 2000,
        "reconnect.backoff.max.ms": 1000,
        **(settings or KafkaSettings.from_env()).client_config(),
        **extra,
    }


def new_topics(topics: Iterable[str], partitions: int, settings: KafkaSettings) -> list[NewTopic]:
    """The topics to create, with the replication the settings ask for."""
    return [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=settings.replication_factor,
            config=settings.topic_config(),
        )
        for name in topics
    ]


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int = 3,
    timeout: float = 10.0,
    *,
    settings: KafkaSettings | None = None,
) -> None:
    """Creates the topics that do not exist yet (existing ones are left alone)."""
    settings = settings or KafkaSettings.from_env()
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **settings.client_config()})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = new_topics([name for name in topics if name not in existing], partitions, settings)
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items() if wanted else []:
        try:
            future.result(timeout)
            log.info("created topic", extra={"topic": name})
        except Exception as exc:  # another process may have created it meanwhile
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
