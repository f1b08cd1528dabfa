"""``[queue] url`` as a list of RabbitMQ nodes: parsing, validation, the order a new
connection tries them in, and how they are shown (``router_core/config.py``,
``router_core/queue/broker.py``'s :func:`node_order`, ``router_core/redact.py``)."""

from __future__ import annotations

import pytest

from eventrouter import config
from eventrouter.queue import broker
from eventrouter.redact import redact_urls

NODES = [
    "amqp://guest:hunter2@127.0.0.1:5681//",
    "amqp://guest:hunter2@127.0.0.1:5682//",
    "amqp://guest:hunter2@127.0.0.1:5683//",
]


def parse_queue(**queue):
    return config.parse({"queue": queue}, "test.toml", {}).queue


def test_one_url_is_a_list_of_one():
    queue = parse_queue(url=NODES[0])
    assert queue.urls == [NODES[0]]
    assert queue.transport == "amqp"


def test_a_list_of_nodes_keeps_its_order():
    queue = parse_queue(url=NODES, queue_type="quorum")
    assert queue.urls == NODES
    assert queue.transport == "amqp"
    assert queue.failover_strategy == "round-robin"


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        ([], "queue.url", "length >= 1"),
        (
            [NODES[0], "http://guest:hunter2@127.0.0.1:15672/"],
            "queue.url[1]",
            "amqp://, redis:// or kafka://",
        ),
        ([NODES[0], "127.0.0.1:5682"], "queue.url[1]", "no scheme"),
        ([NODES[0], "redis://:hunter2@127.0.0.1:6379/5"], "queue.url[1]", "same broker"),
        (
            ["redis://:hunter2@127.0.0.1:6379/5", "redis://:hunter2@127.0.0.1:6380/5"],
            "queue.url",
            "list of Redis URLs is not supported",
        ),
        ([NODES[0], NODES[0]], "queue.url", "listed twice"),
        ([NODES[0], ""], "queue.url[1]", "length >= 1"),
        ([NODES[0], 5682], "queue.url[1]", "Expected `str`"),
    ],
)
def test_a_bad_list_names_the_entry_not_the_password(url, key, message):
    with pytest.raises(config.ConfigError) as raised:
        parse_queue(url=url)
    assert raised.value.key == key
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_one_redis_url_in_a_list_is_accepted():
    assert parse_queue(url=["redis://127.0.0.1:6379/5"]).transport == "redis"


def test_an_unknown_failover_strategy_is_refused():
    with pytest.raises(config.ConfigError, match=r"queue\.failover_strategy"):
        parse_queue(url=NODES, failover_strategy="random")


def test_round_robin_starts_at_the_node_that_answered_last():
    queue = parse_queue(url=NODES)
    assert broker.node_order(queue) == NODES
    broker._last_good[tuple(NODES)] = 1  # as open_connection records it
    try:
        assert broker.node_order(queue) == [NODES[1], NODES[2], NODES[0]]
    finally:
        broker._last_good.clear()


def test_shuffle_tries_every_node_once():
    queue = parse_queue(url=NODES, failover_strategy="shuffle")
    orders = [broker.node_order(queue) for _ in range(50)]
    assert all(sorted(order) == sorted(NODES) for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # 50 draws of 6 orders


def test_the_list_is_shown_without_passwords():
    shown = redact_urls(NODES)
    assert "hunter2" not in shown
    assert shown.count("guest:***@127.0.0.1:568") == 3
    assert redact_urls(NODES[0]) == "amqp://guest:***@127.0.0.1:5681//"


def test_quorum_applies_to_the_dead_letter_queues_too():
    topology = broker.Topology(parse_queue(url=NODES, queue_type="quorum"), ["a", "b"])
    for sink in ("a", "b"):
        assert topology.queue(sink).queue_arguments["x-queue-type"] == "quorum"
        assert topology.dead_queue(sink).queue_arguments == {"x-queue-type": "quorum"}
    classic = broker.Topology(parse_queue(url=NODES), ["a"])
    assert "x-queue-type" not in classic.queue("a").queue_arguments
    assert not classic.dead_queue("a").queue_arguments
