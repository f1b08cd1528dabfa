"""``[queue]`` with a kafka:// URL: the URL and ``[queue.kafka]`` are checked at load,
with errors that name the key (no broker, no confluent-kafka import)."""

from __future__ import annotations

import re

import pytest

from eventrouter import config


def parse(queue: dict) -> config.Config:
    return config.parse({"queue": queue}, "test.toml", {})


def test_a_kafka_url_lists_its_servers():
    loaded = parse({"url": "kafka://k1:9092,k2:9093/", "kafka": {"partitions": 12}})
    assert loaded.queue.transport == "kafka"
    assert config.kafka_servers(loaded.queue.url) == ["k1:9092", "k2:9093"]
    assert loaded.queue.kafka.partitions == 12
    assert loaded.queue.kafka.security_protocol == "plaintext"


@pytest.mark.parametrize(
    ("queue", "key", "words"),
    [
        ({"url": "kafka://k1"}, "queue.url", "not host:port"),
        ({"url": "kafka://k1:hunter2"}, "queue.url", "not host:port"),
        ({"url": "kafka://u:hunter2@k1:9092"}, "queue.url", "sasl_username"),
        ({"url": "kafka://k1:9092/topic"}, "queue.url", "nothing after"),
        ({"url": "kafkas://k1:9092"}, "queue.url", "kafka://"),
        ({"url": ["kafka://k1:9092", "kafka://k2:9092"]}, "queue.url", "not a list"),
        ({"url": ["amqp://g:hunter2@r1:5672//", "kafka://k2:9092"]}, "queue.url[1]", "kafka"),
        (
            {"url": "kafka://k1:9092", "kafka": {"producer": {"acks": "1"}}},
            "queue.kafka.producer.acks",
            "cannot be changed",
        ),
        (
            {"url": "kafka://k1:9092", "kafka": {"consumer": {"enable.auto.commit": True}}},
            "queue.kafka.consumer.enable.auto.commit",
            "cannot be changed",
        ),
        (
            {"url": "kafka://k1:9092", "kafka": {"security_protocol": "sasl_ssl"}},
            "queue.kafka.sasl_mechanism",
            "required with sasl_ssl",
        ),
        (
            {"url": "kafka://k1:9092", "kafka": {"sasl_username": "u", "sasl_password": "p"}},
            "queue.kafka.security_protocol",
            "sasl_ssl",
        ),
        ({"url": "kafka://k1:9092", "kafka": {"partitions": 0}}, "queue.kafka.partitions", ""),
        ({"url": "kafka://k1:9092", "kafka": {"partition": 3}}, "queue.kafka.partition", ""),
        (
            {"url": "kafka://k1:9092", "kafka": {"max_record_bytes": 1000}},
            "queue.kafka.max_record_bytes",
            ">= 65536",
        ),
    ],
)
def test_kafka_errors_name_the_key_not_the_secret(queue, key, words):
    with pytest.raises(config.ConfigError, match=rf"^test\.toml: {re.escape(key)}: ") as raised:
        parse(queue)
    assert raised.value.key == key
    assert words in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_sasl_ssl_with_credentials_loads():
    kafka = {
        "security_protocol": "sasl_ssl",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "router",
        "sasl_password": "${KAFKA_PASSWORD}",
    }
    loaded = config.parse(
        {"queue": {"url": "kafka://b-1.example:9096", "kafka": kafka}},
        "test.toml",
        {"KAFKA_PASSWORD": "s3cret"},
    )
    assert loaded.queue.kafka.sasl_password == "s3cret"
