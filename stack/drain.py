"""A clean stop loses no event: once intake has stopped, the outbox relay
publishes what the outbox holds and the consumers read what the broker holds,
within DRAIN_SECONDS, before they and the broker are stopped (the embedded
broker forgets, when it stops, whatever was not read).

The relay says in its status file (pms_common.status) that a round which
started after intake stopped found the outbox empty. A consumer group has read
everything once its committed offsets reach the end of each partition.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from analytics.config import Config as AnalyticsConfig
from audit.config import Config as AuditConfig
from billing.config import Config as BillingConfig
from pms_common.config import audit_trail_on
from pms_common.kafka import consumer_config
from pms_common.status import problem_of, read_status

DRAIN_SECONDS = 10.0
KAFKA_TIMEOUT_SECONDS = 1.0
# A probe reads partitions by assignment, never joining a group or committing.
PROBE_GROUP = "pms-launcher-drain"
# librdkafka's own lines would interleave with the launcher's; failures surface as timeouts.
QUIET = {"log_level": 0, "logger": logging.getLogger("kafka")}


@dataclass(frozen=True)
class Reader:
    """A consumer group and the topic it reads."""

    group: str
    topic: str


def event_readers():
    """The parts' consumer groups, as their configs name them."""
    analytics, billing = AnalyticsConfig(), BillingConfig()
    audit = AuditConfig()
    readers = [Reader(analytics.CONSUMER_GROUP, analytics.PATIENT_TOPIC)]
    if audit_trail_on():
        readers.append(Reader(audit.CONSUMER_GROUP, audit.PATIENT_TOPIC))
    if billing.EVENTS_ENABLED:
        readers.append(Reader(billing.EVENTS_GROUP_ID, billing.EVENTS_TOPIC))
    return readers


def outbox_emptied(relay_status: Path, since: float) -> bool:
    """Whether the relay found the outbox empty in a round that started after `since` (epoch seconds)."""
    try:
        status = read_status(relay_status)
    except (OSError, ValueError):
        return False
    return bool(status.get("idle")) and (status.get("started_at") or 0) >= since


def partition_bounds(probe: Consumer, topic: str) -> dict[int, tuple[int, int]]:
    """Partition → (first offset, offset after the last message). The end is
    read, not only asked for: a broker may report a high watermark below the
    last message (Tansu reports a batch's first offset), so each partition is
    read from there to its end."""
    metadata = probe.list_topics(topic, timeout=KAFKA_TIMEOUT_SECONDS).topics.get(topic)
    if metadata is None or not metadata.partitions:
        return {}
    bounds = {}
    for partition in metadata.partitions:
        bounds[partition] = probe.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=KAFKA_TIMEOUT_SECONDS
        )
    probe.assign([TopicPartition(topic, partition, high) for partition, (_, high) in bounds.items()])
    pending = set(bounds)
    deadline = time.monotonic() + KAFKA_TIMEOUT_SECONDS
    try:
        while pending and time.monotonic() < deadline:
            message = probe.poll(0.1)
            if message is None:
                continue
            partition, offset, error = message.partition(), message.offset(), message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                continue
            low, high = bounds[partition]
            bounds[partition] = (low, max(high, offset if error is not None else offset + 1))
            if error is not None:
                pending.discard(partition)
    finally:
        probe.unassign()
    if pending:
        raise TimeoutError(f"the end of {topic} could not be read")
    return bounds


def unread_events(bootstrap_servers: str, readers: list[Reader], probe: Consumer) -> dict[str, int]:
    """Group → events of its topic past its committed offsets."""
    unread = {}
    for reader in readers:
        bounds = partition_bounds(probe, reader.topic)
        group = Consumer(consumer_config(bootstrap_servers, reader.group, **QUIET))
        try:
            committed = group.committed(
                [TopicPartition(reader.topic, partition) for partition in bounds],
                timeout=KAFKA_TIMEOUT_SECONDS,
            )
        finally:
            group.close()
        unread[reader.group] = sum(
            max(0, bounds[position.partition][1] - max(position.offset, bounds[position.partition][0]))
            for position in committed
        )
    return unread


def drain(
    relay_status: Path,
    relay_running: bool,
    bootstrap_servers: str,
    readers: list[Reader],
    intake_stopped_at: float,
    seconds: float = DRAIN_SECONDS,
) -> str | None:
    """Waits until the outbox is empty and every reader has read every event;
    None when that happened within `seconds`, else one line on what was left."""
    deadline = time.monotonic() + seconds
    relay_done = not relay_running
    unread: dict[str, int] | None = None
    probe = Consumer(
        consumer_config(bootstrap_servers, PROBE_GROUP, **{"enable.partition.eof": True}, **QUIET)
    )
    try:
        while time.monotonic() < deadline:
            relay_done = relay_done or outbox_emptied(relay_status, intake_stopped_at)
            if relay_done:
                try:
                    unread = unread_events(bootstrap_servers, readers, probe)
                except (KafkaException, TimeoutError):
                    unread = None
                if unread is not None and not any(unread.values()):
                    return None
            time.sleep(0.1)
    finally:
        probe.close()
    return what_was_left(relay_done, relay_status, unread, seconds)


def what_was_left(relay_done: bool, relay_status: Path, unread: dict[str, int] | None, seconds: float) -> str:
    """One line: what the outbox and each reader still had when the time was up."""
    left = []
    if not relay_done:
        left.append(f"the outbox still held events (patient-worker: {problem_of(relay_status) or 'busy'})")
    elif unread is None:
        left.append("the broker's offsets could not be read")
    else:
        left += [f"{count} events unread by {group}" for group, count in unread.items() if count]
    return f"stopping with events undelivered after {seconds:g}s: " + "; ".join(left)
