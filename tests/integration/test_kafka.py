"""Queue mode on a ``kafka://`` queue, against a real Kafka-protocol broker (tansu).

The queue-mode promises on Kafka: the edge's 200 after every delivery report, records
keyed by user, one consumer group per sink, offsets committed after the write (a killed
worker loses nothing), dead-letter topics with ``eventrouter dead-letters``, the spool
while the broker is down, and ``eventrouter replay --from``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition
from segment.analytics import Client

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.events.commands import encode_many
from eventrouter.health import ComponentHealth
from eventrouter.queue import broker, kafka_transport
from eventrouter.queue.deadletters import list_dead_letters, replay
from tests.helpers import HANG_GUARD, LiveServer, eventually, free_port, run_eventrouter, unique
from tests.integration.test_worker import (
    FAST_RETRY,
    ScriptedSinks,
    command,
    log_of,
    post_batches,
    post_each,
    wait_consuming,
)
from tests.kafka_support import KafkaEnv, kafka_env, start_tansu, tansu_broker  # noqa: F401
from tests.queue_support import WorkerProcess, WorkerThread, to_toml

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters


def test_accepted_events_reach_the_store_through_the_worker(kafka_env):
    server = LiveServer(kafka_env.config()).start()
    try:
        ids = [unique("m") for _ in range(30)]
        for message_id in ids[:10]:
            response = server.post(
                "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": message_id}
            )
            assert response.status_code == 200, response.text
        batch = [
            {"type": "track", "anonymousId": f"a{i % 4}", "event": "x", "messageId": m}
            for i, m in enumerate(ids[10:])
        ]
        response = server.post("/v1/batch", {"batch": batch})
        assert response.status_code == 200, response.text
        assert kafka_env.stored_ids() == []  # nothing is stored until a worker runs
        with WorkerThread(kafka_env.config()):
            eventually(lambda: len(kafka_env.stored_ids()) == 30, "30 events stored")
        assert sorted(kafka_env.stored_ids()) == sorted(ids)
    finally:
        server.stop()


def topic_records(env, topic: str) -> list:
    """Every record of ``topic``, read outside any consumer group."""
    consumer = Consumer(
        {"bootstrap.servers": env.url.split("://", 1)[1], "group.id": unique("peek")}
    )
    try:
        marks = kafka_transport.watermarks(consumer, topic, 10)
        ends = {p: high for p, (low, high) in marks.items() if high > low}
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in ends])
        records = []
        while ends:
            record = consumer.poll(HANG_GUARD)
            assert record is not None and record.error() is None, "a record was not read"
            records.append(record)
            if record.offset() + 1 >= ends[record.partition()]:
                del ends[record.partition()]
        return records
    finally:
        consumer.close()


def test_one_users_events_share_a_partition_in_the_order_sent(kafka_env):
    """Records are keyed by anonymousId (else userId): each user's events sit in one
    partition, in the order the edge answered them, whatever else was in the group."""
    server = LiveServer(kafka_env.config()).start()
    sent: dict[str, list[str]] = {"anon-1": [], "user-2": [], "anon-3": []}
    try:
        for _ in range(12):
            mixed = []
            for who in sent:
                message_id = unique("m")
                sent[who].append(message_id)
                field = "userId" if who.startswith("user") else "anonymousId"
                mixed.append({"type": "track", field: who, "event": "x", "messageId": message_id})
            response = server.post("/v1/batch", {"batch": mixed})
            assert response.status_code == 200, response.text
    finally:
        server.stop()
    partitions: dict[str, set[int]] = {who: set() for who in sent}
    seen: dict[str, list[str]] = {who: [] for who in sent}
    for record in topic_records(kafka_env, f"{kafka_env.prefix}.events"):
        headers = kafka_transport.headers_of(record)
        commands = broker.decode(record.value(), headers)
        assert headers[broker.EVENTS_HEADER] == len(commands)
        who = record.key().decode()
        partitions[who].add(record.partition())
        for each in commands:
            assert (each.anonymous_id or each.user_id) == who
            seen[who].append(each.message_id)
    assert {who: len(p) for who, p in partitions.items()} == {who: 1 for who in sent}
    assert seen == sent


def test_each_sink_has_its_own_consumer_group(kafka_env, tmp_path):
    """Two sinks read the same topic at their own pace: a worker for one of them stores
    everything there and nothing in the other, whose worker later gets it all."""
    other_db = tmp_path / "other.db"
    sinks = {
        "local": {"type": "sqlite", "url": f"sqlite:///{kafka_env.db_path}"},
        "other": {"type": "sqlite", "url": f"sqlite:///{other_db}"},
    }
    config = kafka_env.config(sinks=sinks)
    ids = [unique("m") for _ in range(20)]
    server = LiveServer(config).start()
    try:
        post_batches(server, ids, 5)
    finally:
        server.stop()
    with WorkerThread(config, sinks=["local"]):
        eventually(lambda: len(kafka_env.stored_ids()) == 20, "20 events in local")
    assert kafka_env.stored_ids(other_db) == []
    with WorkerThread(config, sinks=["other"]):
        eventually(lambda: len(kafka_env.stored_ids(other_db)) == 20, "20 events in other")
    assert sorted(kafka_env.stored_ids(other_db)) == sorted(ids)
    assert sorted(kafka_env.stored_ids()) == sorted(ids)  # local read nothing twice
    group = kafka_transport.KafkaTopology(config.queue, config.sinks)
    assert kafka_transport.group_lag(config.queue, group.events_topic, group.group("local")) == 0


def test_worker_killed_mid_stream_loses_nothing(kafka_env):
    """SIGKILL while events flow: offsets are committed only after the sink's write, so
    the next worker of the group reads what the killed one had in hand; dedup and the
    unique ``message_id`` index store each event once."""
    raw = kafka_env.raw(dedup=True)
    raw["sinks"]["local"]["batch"] = {"max_events": 400, "timeout": "200ms"}
    path = kafka_env.write_config(raw)
    ids = [unique("m") for _ in range(3000)]
    server = LiveServer(kafka_env.config(dedup=True)).start()
    first = WorkerProcess(path)
    try:
        wait_consuming(first)
        sender = threading.Thread(target=post_batches, args=(server, ids, 50))
        sender.start()
        eventually(lambda: len(kafka_env.stored_ids()) >= 300, "some events stored")
        first.stop(signal.SIGKILL)
        at_kill = len(kafka_env.stored_ids())
        sender.join(HANG_GUARD)
        assert not sender.is_alive()
    finally:
        server.stop()
        first.stop(signal.SIGKILL)
    assert at_kill < 3000, "the worker was not killed mid-stream"
    second = WorkerProcess(path)
    try:
        eventually(lambda: len(kafka_env.stored_ids()) >= 3000, "3000 events stored")
    finally:
        assert second.stop() == 0, log_of(second)
    stored = kafka_env.stored_ids()
    assert len(stored) == len(set(stored)) == 3000
    assert set(stored) == set(ids)
    config = kafka_env.config()
    topology = kafka_transport.KafkaTopology(config.queue, config.sinks)
    lag = kafka_transport.group_lag(config.queue, topology.events_topic, topology.group("local"))
    assert lag == 0  # every offset committed by the second worker


def test_poison_events_go_to_the_dead_letter_topic_and_replay_stores_them(kafka_env):
    """Failed writes are retried; what still fails alone is produced to the sink's
    dead-letter topic, listed (listing changes nothing), kept by a replay while the sink
    still refuses it and stored by one once it is fixed."""
    poisoned = {"on": True}

    def fail(commands) -> str | None:
        if poisoned["on"] and any(c.event == "poison" for c in commands):
            return "poison event refused"
        return None

    plugin = ScriptedSinks(fail)
    sink = {
        "type": "scripted",
        "retry": {"attempts": 2, "initial_backoff": "10ms", "max_duration": "5s"},
        "batch": {"max_events": 5, "timeout": "2s"},
    }
    config = kafka_env.config(sinks={"local": sink})
    good = [unique("good") for _ in range(3)]
    poison = [unique("poison") for _ in range(2)]
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        for message_id in [good[0], poison[0], good[1], poison[1], good[2]]:
            post_each(server, [message_id], "poison" if message_id in poison else "ok")
    finally:
        server.stop()
    with WorkerThread(config, plugins=[plugin]) as worker:
        eventually(lambda: worker.worker.consumers[0].dead_lettered == 2, "2 dead-lettered")
        eventually(lambda: len(plugin.stored) == 3, "the good events stored")
    assert sorted(plugin.stored) == sorted(good)
    assert worker.worker.consumers[0].retries >= 1

    letters = list_dead_letters(config, "local")
    assert list_dead_letters(config, "local") == letters  # listing leaves them
    assert [letter.message_ids for letter in letters] == [[p] for p in poison]
    for letter in letters:
        assert letter.reason == "RuntimeError: poison event refused"
        assert letter.attempts == 3  # two for the batch, one alone
        assert letter.events == 1
        assert letter.dead_lettered_at
    assert list_dead_letters(config, "local", limit=1) == letters[:1]

    kept = replay(config, "local", plugins=[plugin])
    assert [letter.outcome for letter in kept] == ["kept: RuntimeError: poison event refused"] * 2
    assert [letter.message_ids for letter in list_dead_letters(config, "local")] == [
        [p] for p in poison
    ]

    poisoned["on"] = False
    replayed = replay(config, "local", plugins=[plugin])
    assert [letter.outcome for letter in replayed] == ["replayed", "replayed"]
    assert sorted(plugin.stored) == sorted(good + poison)
    assert list_dead_letters(config, "local") == []


def test_dead_letters_command_lists_and_replays(kafka_env):
    """``eventrouter dead-letters list|replay`` on a kafka:// queue, as an operator runs
    it: records in the dead-letter topic are listed (text, JSON), left, then replayed
    into the SQLite store."""
    raw = kafka_env.raw()
    path = kafka_env.write_config(raw)
    config = kafka_env.config()
    topology = kafka_transport.KafkaTopology(config.queue, config.sinks)
    topology.declare(10)
    ids = [unique("m") for _ in range(2)]
    headers = broker.dead_letter_headers(
        {broker.FORMAT_HEADER: broker.FORMAT, broker.EVENTS_HEADER: 1},
        "local",
        "RuntimeError: warehouse was down",
        5,
    )
    producer = kafka_transport.KafkaProducer(config.queue)
    for message_id in ids:
        # One record per produce request: tansu 0.6.0 reports the high watermark of a
        # multi-record batch as its first offset + 1 (docs/queue.md, "The test broker").
        producer.send(
            topology.dead_topic("local"), [(b"u1", encode_many([command(message_id)]), headers)]
        )
    producer.close()

    listed = dead_cli(path, "list", "--sink", "local")
    assert listed.returncode == 0, listed
    assert listed.stdout.count("RuntimeError: warehouse was down") == 2
    assert "2 dead letter(s) for sink 'local'" in listed.stdout
    as_json = dead_cli(path, "list", "--sink", "local", "--json", "--limit", "1")
    [letter] = json.loads(as_json.stdout)
    assert (letter["attempts"], letter["events"], letter["message_ids"]) == (5, 1, ids[:1])

    replayed = dead_cli(path, "replay", "--sink", "local")
    assert replayed.returncode == 0, replayed
    assert "2 dead letter(s) for sink 'local': 2 replayed, 0 kept" in replayed.stdout
    assert sorted(kafka_env.stored_ids()) == sorted(ids)
    empty = dead_cli(path, "list", "--sink", "local", "--json")
    assert (empty.returncode, json.loads(empty.stdout)) == (0, [])


def dead_cli(config_path, *args: str) -> subprocess.CompletedProcess:
    return run_eventrouter("dead-letters", *args, "--config", str(config_path))


def test_the_edge_spools_while_the_broker_is_down(tmp_path):
    """No broker: the edge answers 200 from its spool; a broker comes up (a new, empty
    one: tansu keeps nothing across a restart) and the spool is produced to it, topics
    created again, and a worker stores every event once."""
    port = free_port()
    env = KafkaEnv(f"kafka://127.0.0.1:{port}", tmp_path)
    config = env.config(queue={"confirm_timeout": "2s", "connect_timeout": "1s"})
    ids = [unique("m") for _ in range(12)]
    server = LiveServer(config).start()
    try:
        post_batches(server, ids[:6], 3)  # 200s: spooled
        assert server.health().json()["components"]["spool"]["stats"]["events"] == 6
        with start_tansu(tmp_path, port=port):
            post_batches(server, ids[6:], 3)
            with WorkerThread(config):
                eventually(lambda: len(env.stored_ids()) == 12, "12 events stored")
            assert sorted(env.stored_ids()) == sorted(ids)
            eventually(
                lambda: server.health().json()["components"]["spool"]["stats"]["events"] == 0,
                "the spool drained",
            )
    finally:
        server.stop()


def replay_cli(config_path, *args: str) -> subprocess.CompletedProcess:
    return run_eventrouter("replay", *args, "--config", str(config_path))


def test_replay_from_an_offset_or_a_time_backfills_one_sink(kafka_env, tmp_path):
    """``eventrouter replay --sink NAME --from`` reads the retained log again into one
    sink (a new store being backfilled), from an offset or from a time, and leaves the
    other sinks and their consumer groups alone."""
    backfill_db = tmp_path / "backfill.db"
    sinks = {
        "local": {"type": "sqlite", "url": f"sqlite:///{kafka_env.db_path}"},
        "backfill": {"type": "sqlite", "url": f"sqlite:///{backfill_db}"},
    }
    raw = kafka_env.raw(sinks=sinks)
    path = kafka_env.write_config(raw)
    config = kafka_env.config(sinks=sinks)
    early, late = [unique("early") for _ in range(5)], [unique("late") for _ in range(5)]
    server = LiveServer(config).start()
    try:
        post_each(server, early)
        time.sleep(0.005)  # record timestamps are in milliseconds: the boundary is between
        boundary = datetime.now(UTC)
        time.sleep(0.005)
        post_each(server, late)
        # One record a request: every record sits in a batch of its own on tansu.
        post_each(server, [unique("last")])
    finally:
        server.stop()

    from_time = replay_cli(path, "--sink", "backfill", "--from", boundary.isoformat())
    assert from_time.returncode == 0, from_time
    assert "to sink 'backfill'" in from_time.stdout
    stored = kafka_env.stored_ids(backfill_db)
    assert set(late) <= set(stored) and not set(early) & set(stored)
    assert kafka_env.stored_ids() == []  # the other sink got nothing

    from_offset = replay_cli(path, "--sink", "backfill", "--from", "0", "--json")
    assert from_offset.returncode == 0, from_offset
    assert json.loads(from_offset.stdout)["events"] >= 10
    assert set(early + late) <= set(kafka_env.stored_ids(backfill_db))

    bad = replay_cli(path, "--sink", "backfill", "--from", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    unknown = replay_cli(path, "--sink", "nosuch", "--from", "0")
    assert unknown.returncode == 2 and "'nosuch'" in unknown.stderr


def test_replay_needs_a_kafka_queue(tmp_path):
    path = tmp_path / "eventrouter.toml"
    path.write_text(
        to_toml(
            {
                "queue": {"url": "amqp://guest:guest@127.0.0.1:5672//"},
                "sinks": {"local": {"type": "sqlite", "url": "sqlite:///x.db"}},
            }
        )
    )
    result = replay_cli(path, "--sink", "local", "--from", "0")
    assert result.returncode == 2, result
    assert "queue.url" in result.stderr and "kafka://" in result.stderr


def test_segment_sdk_round_trip_and_health(kafka_env):
    """The official Segment Python SDK against a queued edge on Kafka: every call type
    is answered once delivered to the broker and stored by the worker; ``/health`` shows
    the broker up with each sink's lag and dead letters, and ``/metrics`` the depth."""
    write_key = "sdk-write-key"
    config = kafka_env.config(sources=[{"name": "backend", "write_key": write_key}])
    server = LiveServer(config).start()
    try:
        errors: list[Exception] = []
        client = Client(
            write_key,
            host=server.url,
            sync_mode=True,
            max_retries=1,
            on_error=lambda error, _items: errors.append(error),
        )
        client.track("user-1", "Order Completed", {"revenue": 42.5})
        client.identify("user-1", {"plan": "pro"})
        client.page("user-1", "Docs", "Install")
        client.group("user-1", "acme", {"name": "Acme Inc"})
        client.alias("anon-previous", "user-1")
        client.screen("user-1", "Mobile", "Home")
        client.flush()
        assert errors == []
        broker_health = server.health().json()["components"]["broker"]
        assert broker_health["status"] == "up"
        assert broker_health["detail"].startswith(kafka_env.url)
        assert broker_health["stats"]["queue:local"] >= 1  # waiting for a worker
        assert broker_health["stats"]["dead:local"] == 0
        assert 'eventrouter_queue_depth{sink="local"}' in server.client.get("/metrics").text
        with WorkerThread(config):
            eventually(lambda: len(server.events()) == 6, "6 events stored")
        events = {e["type"]: e for e in server.events()}
        assert set(events) == {"track", "identify", "page", "group", "alias", "screen"}
        assert all(e["source"] == "backend" for e in events.values())
        assert events["track"]["properties"] == {"revenue": 42.5}
        assert server.health().json()["components"]["broker"]["stats"]["queue:local"] == 0
    finally:
        server.stop()


def test_hostile_records_are_dead_lettered_and_the_rest_stored(kafka_env):
    """Records another producer wrote: a binary key, headers that are not UTF-8 or not a
    count, a body that is not commands, an unknown format. Each goes to the dead-letter
    topic with its reason; the good record among them is stored; nothing stops the
    worker, and ``dead-letters list`` shows them without trusting their headers."""
    config = kafka_env.config()
    topology = kafka_transport.KafkaTopology(config.queue, config.sinks)
    topology.declare(10)
    good = unique("good")
    current = {broker.FORMAT_HEADER: broker.FORMAT, broker.EVENTS_HEADER: 1}
    records = [
        (b"\xff\x00key", b"garbage", {broker.FORMAT_HEADER: "\udcff", "x-other": "\x00"}),
        (None, b"[1, 2]", {**current, broker.EVENTS_HEADER: "lots"}),
        (b"u1", encode_many([command(good)]), current),
        (b"u1", encode_many([command(unique("m"))]), {broker.FORMAT_HEADER: "commands/9"}),
    ]
    producer = kafka_transport.KafkaProducer(config.queue)
    for key, body, headers in records:
        producer.producer.produce(
            topology.events_topic,
            value=body,
            key=key,
            headers=[(k, str(v).encode("utf-8", "surrogateescape")) for k, v in headers.items()],
        )
        assert producer.producer.flush(HANG_GUARD) == 0
    producer.close()
    with WorkerThread(config) as worker:
        eventually(lambda: worker.worker.consumers[0].dead_lettered == 3, "3 dead-lettered")
        eventually(lambda: kafka_env.stored_ids() == [good], "the good event stored")
    letters = list_dead_letters(config, "local")
    assert len(letters) == 3
    assert all(letter.reason.startswith("undecodable: ") for letter in letters)
    assert all(letter.events is None and letter.message_ids == [] for letter in letters)
    # The records sit in several partitions, so the dead letters come in no fixed order.
    assert sum("commands/9" in letter.reason for letter in letters) == 1


CHECK_IMPORTS = """
import sys
from eventrouter import config
from eventrouter.app import create_app
from eventrouter.queue.worker import Worker
import eventrouter.cli
sinks = {"local": {"type": "sqlite", "url": "sqlite:///x.db"}}
for queue in (None, {"url": "amqp://guest:guest@127.0.0.1:5672//"}):
    raw = {"sinks": sinks, **({"queue": queue} if queue else {})}
    loaded = config.parse(raw, "t.toml", {"EVENTROUTER_DATA_DIR": "."})
    create_app(loaded)
    if queue:
        Worker(loaded)
print("confluent_kafka" in sys.modules)
"""


def test_embedded_and_rabbitmq_deployments_never_load_confluent_kafka(tmp_path):
    """confluent-kafka is a runtime dependency, but only a kafka:// queue imports it."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK_IMPORTS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env={**os.environ, "EVENTROUTER_ADMIN_TOKEN": "x" * 32},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_broker_restart_under_a_running_edge_and_worker_loses_nothing(tmp_path):
    """The broker goes away under a running edge and worker and comes back empty (tansu
    keeps nothing; a real broker keeps its log, which is the easier case): the edge
    answers 200 throughout from its spool, the worker reconnects, the topics are created
    again, and every event is stored once."""
    port = free_port()
    env = KafkaEnv(f"kafka://127.0.0.1:{port}", tmp_path)
    config = env.config(queue={"confirm_timeout": "2s", "connect_timeout": "1s"})
    ids = [unique("m") for _ in range(30)]
    with start_tansu(tmp_path, port=port) as tansu:
        server = LiveServer(config).start()
        worker = WorkerThread(config).start()
        try:
            post_batches(server, ids[:10], 5)
            eventually(lambda: len(env.stored_ids()) == 10, "10 events stored")
            tansu.stop()
            post_batches(server, ids[10:20], 5)  # every one answered 200: spooled
            tansu.start()
            post_batches(server, ids[20:], 5)
            eventually(lambda: len(set(env.stored_ids())) == 30, "30 events stored")
        finally:
            worker.stop()
            server.stop()
    stored = env.stored_ids()
    assert sorted(set(stored)) == sorted(ids)


class DownStore:
    """A plugin offering sink type ``downable``: while ``down`` is set, every write fails
    and its health probe says it is unreachable (a database down); ``stored`` keeps every
    stored message id in order, duplicates included."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.stored: list[str] = []
        plugin = self

        class Downable(Sink):
            class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
                pass

            def write(self, commands) -> None:
                if plugin.down.is_set():
                    raise ConnectionError("store unreachable")
                plugin.stored.extend(c.message_id for c in commands)

            def health(self) -> ComponentHealth:
                return ComponentHealth(name=f"sink:{self.name}", up=not plugin.down.is_set())

        self.sink_type = Downable

    @hookimpl
    def eventrouter_sink_types(self) -> dict:
        return {"downable": self.sink_type}


def test_a_batch_held_longer_than_the_poll_interval_is_written_once(kafka_env):
    """The store is down for longer than ``max.poll.interval.ms`` (3 s here): the worker
    holds its batch, and keeps polling with its partitions paused, so it stays in the
    group; once the store is back the batch is written and committed, each event once,
    and nothing is dead-lettered."""
    plugin = DownStore()
    sink = {"type": "downable", "retry": FAST_RETRY, "batch": {"max_events": 50}}
    config = kafka_env.config(sinks={"local": sink})
    ids = [unique("m") for _ in range(20)]
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        post_batches(server, ids[:10], 5)
        plugin.down.set()
        with WorkerThread(config, plugins=[plugin]) as worker:
            consumer = worker.worker.consumers[0]
            eventually(lambda: consumer.held == 1, "the batch held")
            post_batches(server, ids[10:], 5)
            time.sleep(8.0)  # a duration the case needs (past 3 s twice), not an assertion
            plugin.down.clear()
            eventually(lambda: len(plugin.stored) >= 20, "20 events stored")
            assert consumer.dead_lettered == 0
    finally:
        server.stop()
    assert sorted(plugin.stored) == sorted(ids)
    assert len(plugin.stored) == 20  # none read again by a rejoined consumer
    topology = kafka_transport.KafkaTopology(config.queue, config.sinks)
    lag = kafka_transport.group_lag(config.queue, topology.events_topic, topology.group("local"))
    assert lag == 0


def test_a_large_group_of_one_user_is_cut_into_records_the_broker_accepts(kafka_env):
    """Kafka refuses a record above the broker's ``message.max.bytes`` (1 MB by default):
    one user's 200 KB batch with ``max_record_bytes`` at its minimum (64 KiB) is cut into
    records that each fit, in one partition, in order, and all of it is stored."""
    config = kafka_env.config(queue={"kafka": {"max_record_bytes": 65536}})
    ids = [unique("m") for _ in range(100)]
    padding = "x" * 2000
    batch = [
        {
            "type": "track",
            "userId": "big",
            "event": "x",
            "messageId": m,
            "properties": {"p": padding},
        }
        for m in ids
    ]
    server = LiveServer(config).start()
    try:
        response = server.post("/v1/batch", {"batch": batch})
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    # Read until the 100 events came, not to the high watermark: tansu reports a
    # multi-record batch's as its first offset + 1 (docs/kafka.md, "The test broker").
    records = records_holding(kafka_env, f"{kafka_env.prefix}.events", 100)
    assert len(records) >= 4
    assert all(len(r.value()) <= 65536 for r in records)
    assert len({r.partition() for r in records}) == 1
    in_order = [c.message_id for r in records for c in broker.decode(r.value(), current_headers(r))]
    assert in_order == ids
    with WorkerThread(config):
        eventually(lambda: len(kafka_env.stored_ids()) == 100, "100 events stored")


def current_headers(record) -> dict:
    return kafka_transport.headers_of(record)


def records_holding(env, topic: str, events: int) -> list:
    """The records of ``topic`` from its start until they hold ``events`` events."""
    consumer = Consumer(
        {"bootstrap.servers": env.url.split("://", 1)[1], "group.id": unique("peek")}
    )
    try:
        marks = kafka_transport.watermarks(consumer, topic, 10)
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in marks.items()])
        records, held = [], 0
        while held < events:
            record = consumer.poll(HANG_GUARD)
            assert record is not None and record.error() is None, "a record was not read"
            records.append(record)
            held += kafka_transport.headers_of(record)[broker.EVENTS_HEADER]
        return records
    finally:
        consumer.close()


def test_keyed_records_respect_both_limits_and_keep_each_keys_order():
    items = [(1, b'"a1"', b"a"), (1, b'"b1"', b"b"), (2, b'"a2","a3"', b"a"), (1, b'"a4"', b"a")]
    records = list(kafka_transport.keyed(items, limit=3, max_bytes=1_000))
    assert records == [(b"a", 3, b'["a1","a2","a3"]'), (b"a", 1, b'["a4"]'), (b"b", 1, b'["b1"]')]
    by_bytes = list(kafka_transport.keyed(items, limit=100, max_bytes=12))
    assert [body for key, _, body in by_bytes if key == b"a"] == [
        b'["a1"]',
        b'["a2","a3"]',
        b'["a4"]',
    ]
