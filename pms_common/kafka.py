"""Kafka client settings and helpers shared by the producer (patient's outbox
relay) and the consumer (analytics). librdkafka with the defaults joins a
consumer group slowly on small brokers; these settings keep it to seconds."""
import logging

from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


def producer_config(bootstrap_servers, **extra):
    return {
        "bootstrap.servers": bootstrap_servers,
        "acks": "all",
        "linger.ms": 2,
        # A message not acknowledged within this time fails its delivery
        # callback; the outbox keeps it and sends it again later.
        "message.timeout.ms": 10000,
        "socket.connection.setup.timeout.ms": 3000,
        "reconnect.backoff.max.ms": 1000,
        **extra,
    }


def consumer_config(bootstrap_servers, group_id, **extra):
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "reconnect.backoff.max.ms": 1000,
        **extra,
    }


def ensure_topics(bootstrap_servers, topics, partitions=3, timeout=10.0):
    """Creates the topics that do not exist yet (existing ones are left alone)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(name, num_partitions=partitions, replication_factor=1)
              for name in topics if name not in existing]
    for name, future in (admin.create_topics(wanted, request_timeout=timeout).items() if wanted else []):
        try:
            future.result(timeout)
            log.info("created topic %s", name)
        except Exception as exc:  # another process may have created it meanwhile
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise

