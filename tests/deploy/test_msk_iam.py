"""Kafka client settings for Amazon MSK: IAM authentication over TLS, and
topics kept on three brokers. No AWS access: the token is signed locally with
made-up credentials, and the clients are pointed at a port nobody listens on."""

import base64
import os
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pms_common.config import ConfigError
from pms_common.kafka import IAM, PLAINTEXT, KafkaSettings, consumer_config, new_topics, producer_config
from stack.harness import free_port

REGION = "eu-west-1"
KAFKA_VARIABLES = (
    "KAFKA_SECURITY",
    "KAFKA_REPLICATION_FACTOR",
    "KAFKA_MIN_INSYNC_REPLICAS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def env(monkeypatch):
    """A clean Kafka environment, with made-up AWS credentials and no AWS config files."""
    for name in KAFKA_VARIABLES + ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture
def msk(env):
    """The environment an ECS task that talks to MSK gets from the template."""
    env.setenv("KAFKA_SECURITY", "iam")
    env.setenv("AWS_REGION", REGION)
    env.setenv("KAFKA_REPLICATION_FACTOR", "3")
    env.setenv("KAFKA_MIN_INSYNC_REPLICAS", "2")
    return env


def decoded(token):
    """The signed URL an MSK IAM token is (base64url without padding)."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def test_by_default_clients_speak_plaintext_and_topics_keep_one_copy(env):
    settings = KafkaSettings.from_env()
    assert settings == KafkaSettings(
        security=PLAINTEXT, region=None, replication_factor=1, min_insync_replicas=None
    )
    for config in (producer_config("127.0.0.1:9092"), consumer_config("127.0.0.1:9092", "group")):
        assert not {"security.protocol", "sasl.mechanism", "oauth_cb"} & set(config)
    (topic,) = new_topics(["patient"], 3, settings)
    assert (topic.topic, topic.num_partitions, topic.replication_factor, topic.config) == (
        "patient",
        3,
        1,
        {},
    )


def test_plaintext_clients_never_import_the_signer(env):
    """Local runs and tests do not need aws-msk-iam-sasl-signer-python (nor boto3)."""
    code = (
        "import sys; from pms_common.kafka import producer_config, consumer_config, ensure_topics; "
        "producer_config('127.0.0.1:9092'); consumer_config('127.0.0.1:9092', 'g'); "
        "sys.exit('aws_msk_iam_sasl_signer' in sys.modules)"
    )
    clean = {k: v for k, v in os.environ.items() if k not in KAFKA_VARIABLES}
    assert subprocess.run([sys.executable, "-c", code], env=clean, timeout=60).returncode == 0


def test_on_msk_clients_use_iam_over_tls(msk):
    settings = KafkaSettings.from_env()
    assert settings.security == IAM and settings.region == REGION
    for config in (
        producer_config("b-1.pms-kafka.example:9098"),
        consumer_config("b-1.pms-kafka.example:9098", "analytics-service"),
    ):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "OAUTHBEARER"
        assert callable(config["oauth_cb"])
    # Explicit settings win over the environment (a part's config object passes its own).
    assert "oauth_cb" not in producer_config("127.0.0.1:9092", settings=KafkaSettings())


def test_the_token_is_a_signed_kafka_connect_request_for_the_region(msk):
    before = time.time()
    token, expires = producer_config("b-1.pms-kafka.example:9098")["oauth_cb"]("")
    url = urlparse(decoded(token))
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc) == ("https", f"kafka.{REGION}.amazonaws.com")
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("AKIAIOSFODNN7EXAMPLE/")
    assert query["X-Amz-Credential"][0].endswith(f"/{REGION}/kafka-cluster/aws4_request")
    assert query["X-Amz-Signature"][0]
    # librdkafka wants seconds since the epoch (the signer gives milliseconds).
    assert before + 60 < expires <= time.time() + 15 * 60 + 1


@pytest.mark.parametrize(
    "make_client",
    [
        lambda config: Producer(config),
        lambda config: Consumer(config),
        lambda config: AdminClient(
            {
                k: v
                for k, v in config.items()
                if k in ("bootstrap.servers", "security.protocol", "sasl.mechanism", "oauth_cb", "log_level")
            }
        ),
    ],
    ids=["producer", "consumer", "admin"],
)
def test_each_client_fetches_its_token_by_itself(msk, make_client):
    """confluent-kafka calls oauth_cb on its own thread: no poll() is needed
    before the first request (an AdminClient's list_topics included)."""
    config = consumer_config(f"127.0.0.1:{free_port()}", "analytics-service", log_level=0)
    signer = config["oauth_cb"]
    tokens = []
    called = threading.Event()

    def recording_oauth_cb(oauth_config):
        tokens.append(signer(oauth_config))
        called.set()
        return tokens[-1]

    config["oauth_cb"] = recording_oauth_cb
    client = make_client(config)
    try:
        assert called.wait(10), "the client never asked for a token"
    finally:
        if isinstance(client, Consumer):
            client.close()
    token, _ = tokens[0]
    assert "Action=kafka-cluster%3AConnect" in decoded(token)


def test_on_msk_topics_keep_three_copies_and_need_two_in_sync(msk):
    topics = new_topics(["patient", "patient.dlq"], 3, KafkaSettings.from_env())
    assert [(t.topic, t.num_partitions, t.replication_factor, t.config) for t in topics] == [
        ("patient", 3, 3, {"min.insync.replicas": "2"}),
        ("patient.dlq", 3, 3, {"min.insync.replicas": "2"}),
    ]


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"KAFKA_SECURITY": "sasl"}, "KAFKA_SECURITY"),
        ({"KAFKA_SECURITY": "iam"}, "AWS_REGION"),
        ({"KAFKA_REPLICATION_FACTOR": "0"}, "KAFKA_REPLICATION_FACTOR"),
        ({"KAFKA_REPLICATION_FACTOR": "3", "KAFKA_MIN_INSYNC_REPLICAS": "4"}, "KAFKA_MIN_INSYNC_REPLICAS"),
        ({"KAFKA_REPLICATION_FACTOR": "three"}, "KAFKA_REPLICATION_FACTOR"),
    ],
)
def test_a_wrong_setting_fails_at_start_with_its_name(env, variables, message):
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        KafkaSettings.from_env()
