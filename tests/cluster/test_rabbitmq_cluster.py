"""A RabbitMQ cluster of 3 nodes with quorum queues, and failover under load (issue 21).

Needs Debian's ``rabbitmq-server`` (the nodes are started by ``rabbit_support``'s session
fixture, on 127.0.0.1:5681-5683, and stopped by PID), PostgreSQL-free: the store is an
SQLite file, and Redis (the machine's, 6379) for dedup. The edge is a real
``eventrouter serve`` and the worker a real ``eventrouter worker``, both given the three
node URLs. The hard fault is SIGKILL of the node that leads the sink's quorum queue.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from typing import Any

import httpx
import pytest
from amqp.exceptions import MessageNacked

from eventrouter.bus.bus import StartFailed
from eventrouter.events.commands import encode_many
from eventrouter.queue import broker
from tests.cluster.rabbit_support import (  # noqa: F401 - fixtures
    NODES,
    RabbitCluster,
    all_nodes_running,
    node_name,
    rabbit_cluster,
    wait_members,
    wait_seconds,
)
from tests.faults.support import Load, assert_exactly_once, settle, stored
from tests.helpers import (
    ADMIN_BEARER,
    ServeProcess,
    eventually,
    make_config,
    run_eventrouter,
    unique,
)
from tests.integration.test_metrics import samples, value
from tests.integration.test_worker import command
from tests.queue_support import QueueEnv, WorkerProcess, WorkerThread
from tests.tcp_proxy import TcpProxy

# ruff: noqa: F811 - pytest fixtures are parameters


@pytest.fixture
def cluster_env(all_nodes_running, tmp_path) -> Any:
    """A broker namespace (own prefix) on the cluster; its queues deleted afterwards."""
    env = QueueEnv(all_nodes_running.url(2), tmp_path)
    yield env
    env.cleanup()


def cluster_raw(env: QueueEnv, cluster: RabbitCluster, **queue: Any) -> dict[str, Any]:
    """Queue mode on the 3 nodes with quorum queues, Redis dedup, and an SQLite store with
    no UNIQUE index on ``message_id``: a duplicate that dedup lets through is a row."""
    sinks = {
        "local": {
            "type": "sqlite",
            "url": f"sqlite:///{env.db_path}",
            "indexes": ["user_id"],
            "batch": {"max_events": 500, "timeout": "100ms"},
        }
    }
    return env.raw(
        dedup=True,
        sinks=sinks,
        queue={"url": cluster.urls, "queue_type": "quorum", **queue},
    )


def test_the_cluster_runs_three_members(rabbit_cluster):
    for n in NODES:
        assert rabbit_cluster.running_nodes(n) == [node_name(m) for m in NODES]


def test_quorum_queues_for_the_sinks_and_their_dead_letters(rabbit_cluster, cluster_env):
    config = make_config(cluster_env.tmp_path, cluster_raw(cluster_env, rabbit_cluster))
    topology = broker.Topology(config.queue, ["local", "other"])
    cluster_env.sinks.add("other")
    connection = broker.open_connection(config.queue)
    try:
        topology.declare(connection.channel())
    finally:
        broker.close(connection, 5)
    queues = rabbit_cluster.queues(3)
    for sink in ("local", "other"):
        for name in (cluster_env.queue_name(sink), cluster_env.dead_queue_name(sink)):
            assert queues[name]["type"] == "quorum", queues[name]
            assert sorted(queues[name]["members"]) == [node_name(n) for n in NODES]


def test_a_classic_queue_is_not_redeclared_quorum(rabbit_cluster, cluster_env):
    """The previous release's classic queue under a config that now says quorum: the
    worker stops with the queue's name and what to do, instead of retrying forever."""
    raw = cluster_raw(cluster_env, rabbit_cluster)
    classic = make_config(
        cluster_env.tmp_path, {**raw, "queue": {**raw["queue"], "queue_type": "classic"}}
    )
    connection = broker.open_connection(classic.queue)
    try:
        broker.Topology(classic.queue, ["local"]).declare(connection.channel())
    finally:
        broker.close(connection, 5)
    worker = WorkerThread(make_config(cluster_env.tmp_path, raw)).start()
    eventually(lambda: worker.worker.fatal is not None, "the worker gave up")
    with pytest.raises(StartFailed) as failed:
        worker.stop()
    message = str(failed.value)
    assert f"queue '{cluster_env.queue_name()}' exists as a classic queue" in message
    assert 'queue_type = "quorum"' in message
    assert f"rabbitmqctl delete_queue {cluster_env.queue_name()}" in message
    assert rabbit_cluster.queues(1)[cluster_env.queue_name()]["type"] == "classic"


class ClosingNode:
    """A listener that accepts and at once closes each connection (a node that is not a
    broker any more), counting the attempts."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.attempts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by the test
            while True:
                connection, _ = self.listener.accept()
                self.attempts += 1
                connection.close()

    def close(self) -> None:
        self.listener.close()


def test_each_node_is_tried_once_and_the_error_names_them(rabbit_cluster, cluster_env):
    raw = cluster_raw(cluster_env, rabbit_cluster)
    dead = [f"amqp://guest:secret-pw@127.0.0.1:{port}//" for port in (5688, 5689)]
    closing = ClosingNode()
    try:
        raw["queue"]["url"] = [
            f"amqp://guest:secret-pw@127.0.0.1:{closing.port}//",
            *dead,
            rabbit_cluster.url(3),
        ]
        config = make_config(cluster_env.tmp_path, raw)
        connection = broker.open_connection(config.queue)
        try:
            assert broker.node_of(connection) == "amqp://guest:***@127.0.0.1:5683//"
        finally:
            broker.close(connection, 5)
        assert closing.attempts == 1  # one attempt per node, then the next node
    finally:
        closing.close()
    raw["queue"]["url"] = dead
    with pytest.raises(broker.BrokerUnreachable) as failed:
        broker.open_connection(make_config(cluster_env.tmp_path, raw).queue)
    message = str(failed.value)
    assert "127.0.0.1:5688//: ConnectionRefusedError" in message
    assert "127.0.0.1:5689//: ConnectionRefusedError" in message
    assert "secret-pw" not in message


def test_the_commands_take_the_node_list(rabbit_cluster, cluster_env):
    """``config check`` shows the nodes without passwords; ``dead-letters list`` and
    ``replay`` reach the cluster past a node that does not answer."""
    raw = cluster_raw(cluster_env, rabbit_cluster)
    raw["queue"]["url"] = ["amqp://guest:secret-pw@127.0.0.1:5689//", *rabbit_cluster.urls]
    path = cluster_env.write_config(raw)
    config = make_config(cluster_env.tmp_path, raw)
    topology = broker.Topology(config.queue, ["local"])
    message_id = unique("dead-")
    connection = broker.open_connection(config.queue)
    try:
        channel = connection.channel()
        topology.declare(channel)
        headers = broker.dead_letter_headers(
            {broker.FORMAT_HEADER: broker.FORMAT, broker.EVENTS_HEADER: 1},
            "local",
            "RuntimeError: warehouse was down",
            5,
        )
        broker.RoutedProducer(channel, topology.dead_exchange).publish(
            encode_many([command(message_id)]),
            routing_key="local",
            timeout=10,
            **{**broker.message_properties(1), "headers": headers},
        )
    finally:
        broker.close(connection, 5)

    checked = run_eventrouter("config", "check", str(path))
    assert checked.returncode == 0, checked
    assert "amqp://guest:***@127.0.0.1:5689//, amqp://guest:***@127.0.0.1:5681//" in checked.stdout
    assert "secret-pw" not in checked.stdout + checked.stderr

    listed = run_eventrouter(
        "dead-letters", "list", "--sink", "local", "--json", "--config", str(path)
    )
    assert listed.returncode == 0, listed
    [letter] = json.loads(listed.stdout)
    assert (letter["message_ids"], letter["reason"]) == (
        [message_id],
        "RuntimeError: warehouse was down",
    )
    replayed = run_eventrouter("dead-letters", "replay", "--sink", "local", "--config", str(path))
    assert replayed.returncode == 0, replayed
    assert "1 replayed, 0 kept" in replayed.stdout
    assert cluster_env.stored_ids() == [message_id]

    raw["queue"]["url"] = [
        "amqp://guest:secret-pw@127.0.0.1:5688//",
        "amqp://guest:secret-pw@127.0.0.1:5689//",
    ]
    down = cluster_env.write_config(raw, "down.toml")
    refused = run_eventrouter("dead-letters", "list", "--sink", "local", "--config", str(down))
    assert refused.returncode == 3, refused
    assert (
        "broker unreachable at amqp://guest:***@127.0.0.1:5688//, amqp://guest:***@127.0.0.1:5689//"
        in refused.stderr
    )
    assert "secret-pw" not in refused.stderr


def test_an_unroutable_publish_is_refused_on_the_cluster(rabbit_cluster, cluster_env):
    """Mandatory publishing holds on a cluster: a routing key that reaches no queue is
    returned, not confirmed into nowhere."""
    config = make_config(cluster_env.tmp_path, cluster_raw(cluster_env, rabbit_cluster))
    topology = broker.Topology(config.queue, ["local"])
    connection = broker.open_connection(config.queue)
    try:
        channel = connection.channel()
        topology.declare(channel)
        producer = broker.RoutedProducer(channel, topology.exchange)
        producer.publish(b"[]", routing_key=broker.ALL, timeout=10, **broker.message_properties(0))
        with pytest.raises(broker.Unroutable):
            producer.publish(
                b"[]", routing_key="sink.nowhere", timeout=10, **broker.message_properties(0)
            )
    finally:
        broker.drop(connection)


def test_a_confirm_needs_a_majority_of_the_nodes(rabbit_cluster, cluster_env):
    """With 2 of the 3 nodes killed, the survivor takes the publish but never confirms it
    (a quorum queue commits a message once a majority of its members wrote it): the edge
    would spool or answer 503, never 200 on the broker's word. Once a second node is back,
    a publish is confirmed again."""
    cluster = rabbit_cluster
    raw = cluster_raw(cluster_env, cluster)
    raw["queue"]["url"] = [cluster.url(3)]
    config = make_config(cluster_env.tmp_path, raw)
    topology = broker.Topology(config.queue, ["local"])
    connection = broker.open_connection(config.queue)
    try:
        topology.declare(connection.channel())
    finally:
        broker.close(connection, 5)
    wait_members(cluster, cluster_env.queue_name(), 3, asked=3)
    cluster.kill(1)
    cluster.kill(2)
    connection = broker.open_connection(config.queue)
    try:
        producer = broker.RoutedProducer(connection.channel(), topology.exchange)
        with pytest.raises(Exception) as unconfirmed:  # a confirm timeout, or a nack
            producer.publish(
                b"[]", routing_key=broker.ALL, timeout=5, **broker.message_properties(0)
            )
        assert isinstance(unconfirmed.value, TimeoutError | MessageNacked), unconfirmed.value
    finally:
        broker.drop(connection)
    cluster.start_node(1)
    wait_members(cluster, cluster_env.queue_name(), 2, asked=3)
    connection = broker.open_connection(config.queue)
    try:
        producer = broker.RoutedProducer(connection.channel(), topology.exchange)
        producer.publish(b"[]", routing_key=broker.ALL, timeout=30, **broker.message_properties(0))
    finally:
        broker.close(connection, 5)


def test_the_spool_answers_while_every_node_is_unreachable(rabbit_cluster, cluster_env):
    """Every node cut off (each reached through a TcpProxy that the test stops): the edge
    spools and answers 200, /health names the nodes without passwords; once they are back
    the spool is replayed and the worker stores everything."""
    proxies = [TcpProxy(5680 + n).start() for n in NODES]
    raw = cluster_raw(cluster_env, rabbit_cluster)
    raw["queue"]["url"] = [f"amqp://guest:guest@127.0.0.1:{p.port}//" for p in proxies]
    path = cluster_env.write_config(raw, f"serve-{unique()}.toml")
    api = ServeProcess(cluster_env.tmp_path, "--config", str(path)).wait_ready()
    worker = WorkerProcess(path)
    try:
        health = httpx.get(f"{api.url}/health", headers=ADMIN_BEARER, timeout=30).json()
        up = health["components"]["broker"]
        assert up["status"] == "up", up
        reached = [f"amqp://guest:***@127.0.0.1:{p.port}// (of 3 nodes)" for p in proxies]
        assert any(up["detail"].startswith(node) for node in reached), up["detail"]
        for proxy in proxies:
            proxy.stop()
        ids = [unique("spooled-") for _ in range(20)]
        for message_id in ids:
            body = {"type": "track", "event": "E", "userId": "u", "messageId": message_id}
            assert httpx.post(f"{api.url}/v1/track", json=body, timeout=30).status_code == 200
        health = httpx.get(f"{api.url}/health", headers=ADMIN_BEARER, timeout=30).json()
        broker_health = health["components"]["broker"]
        assert broker_health["status"] == "down", broker_health
        for proxy in proxies:
            assert f"guest:***@127.0.0.1:{proxy.port}//" in broker_health["detail"]
        assert ":guest@" not in json.dumps(health)
        assert not set(ids) & set(stored(raw["sinks"]["local"]))
        for proxy in proxies:
            proxy.start()
        eventually(lambda: set(ids) <= set(stored(raw["sinks"]["local"])), "spool replayed")
    finally:
        for proxy in proxies:
            proxy.stop()
        stopped = {"worker": worker.stop(), "serve": api.stop()}
    assert stopped == {"worker": 0, "serve": 0}, worker.log() + api.log()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_leader_node_killed_under_load(rabbit_cluster, cluster_env, capsys):
    """SIGKILL of the node that leads the sink's quorum queue while SDK-like clients post
    batches: every answer is 200 or 503 + Retry-After, every 200 is stored once, the
    worker goes on through the survivors, and the node rejoins once restarted."""
    cluster, env = rabbit_cluster, cluster_env
    raw = cluster_raw(env, cluster)
    sink = raw["sinks"]["local"]
    path = env.write_config(raw, f"serve-{unique()}.toml")
    api = ServeProcess(env.tmp_path, "--config", str(path)).wait_ready()
    worker = WorkerProcess(path)
    load = Load(api.url, clients=3, size=10, pause=0.02).start()
    try:
        load.wait_acknowledged(600)
        eventually(lambda: len(stored(sink)) >= 300, "events flowing to the store")
        queue = env.queue_name()
        survivor = next(n for n in NODES if n != 1)
        leader_name = wait_members(cluster, queue, 3, asked=survivor)["leader"]
        leader = next(n for n in NODES if node_name(n) == leader_name)
        asked = next(n for n in NODES if n != leader)
        cluster.kill(leader)
        at_kill = len(load.acknowledged)
        # Clients keep posting; events first sent well after the kill must get stored
        # through the two survivors, with the dead node still down.
        load.wait_acknowledged(at_kill + 600)
        later = load.acknowledged[at_kill + 300 :]
        eventually(lambda: set(later) <= set(stored(sink)), "events after the kill stored")
        new_leader = wait_members(cluster, queue, 2, asked=asked)["leader"]
        assert new_leader != leader_name
        assert worker.process.poll() is None, worker.log()
        cluster.start_node(leader)
        eventually(
            lambda: cluster.running_nodes(asked) == [node_name(n) for n in NODES],
            f"{leader_name} running in the cluster again",
        )
        rejoined = wait_members(cluster, queue, 3, asked=leader)
        assert leader_name in rejoined["members"]
        load.wait_acknowledged(len(load.acknowledged) + 200)
        load.stop()
        settle(load, {"local": sink})
        exposed = samples(httpx.get(f"{api.url}/metrics", timeout=10).text)
        spooled = value(exposed, "eventrouter_spool_spooled_events_total")
        replayed = value(exposed, "eventrouter_spool_replayed_events_total")
    finally:
        load.stop()
        stopped = {"worker": worker.stop(), "serve": api.stop()}
    assert stopped == {"worker": 0, "serve": 0}, worker.log() + api.log()
    rows = assert_exactly_once(load, {"local": sink})
    assert not load.failures, load.failures[:3]
    assert set(load.statuses) <= {200, 503}, load.statuses
    assert load.transport_errors == 0, "the edge dropped connections"
    duplicates = rows["local"] - len(set(stored(sink)))
    assert duplicates == 0
    assert replayed == spooled
    dropped = re.search(r"(\d+) dropped as duplicates", worker.log())
    with capsys.disabled():
        print(
            f"\nrabbitmq cluster, leader {leader_name} SIGKILLed under load: "
            f"acknowledged {len(load.acknowledged)}, stored {rows['local']}, "
            f"duplicates {duplicates}, 503s {load.statuses.get(503, 0)}, "
            f"answers {dict(load.statuses)}, acknowledged before the kill {at_kill}, "
            f"spooled by the edge and replayed {int(spooled)}, redeliveries dropped by "
            f"dedup {dropped.group(1) if dropped else '?'}"
        )
