"""Dead letters against the real RabbitMQ and Redis of this machine.

A message the worker cannot deliver (a poison event that fails every retry) or cannot
read (garbage, an unknown format version) ends in its sink's dead-letter queue with the
reason in its headers. ``eventrouter dead-letters list`` shows it without removing it;
``replay`` executes its commands again once the sink is fixed and keeps what still
fails. Each case runs on both transports, in process (``list_dead_letters``,
``replay``) and through the real command line.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from kombu import Queue

from eventrouter.events.commands import decode_many, encode_many
from eventrouter.queue import broker
from eventrouter.queue.deadletters import list_dead_letters, replay
from tests.helpers import LiveServer, eventually, run_eventrouter
from tests.integration.test_worker import ScriptedSinks, command, post_each, publish_raw, ready
from tests.queue_support import QueueEnv, WorkerThread, queue_env, unique  # noqa: F401

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

CURRENT_FORMAT = {broker.FORMAT_HEADER: broker.FORMAT, broker.EVENTS_HEADER: 1}


def peek(env: QueueEnv, queue_name: str) -> list[Any]:
    """The messages of ``queue_name``, left in it (taken unacknowledged, then closed)."""
    messages = []
    with env.connection() as connection:
        queue = Queue(queue_name, channel=connection.channel())
        while (message := queue.get(no_ack=False)) is not None:
            messages.append(message)
    return messages


def cli(config_path, *args: str) -> subprocess.CompletedProcess:
    return run_eventrouter("dead-letters", *args, "--config", str(config_path))


def test_poison_message_is_dead_lettered_listed_and_replayed(queue_env):
    """Two poison events among good ones: the good ones are stored, the poison ones wait
    in the dead-letter queue (listing changes nothing) until the sink is fixed and
    ``replay`` stores them."""
    poisoned = {"on": True}

    def fail(commands) -> str | None:
        if poisoned["on"] and any(c.event == "poison" for c in commands):
            return "poison event refused"
        return None

    plugin = ScriptedSinks(fail)
    sink = {
        "type": "scripted",
        "retry": {"attempts": 2, "initial_backoff": "10ms", "max_duration": "5s"},
        # The five messages below make one batch: it fails, then each is tried alone.
        "batch": {"max_events": 5, "timeout": "10s"},
    }
    config = queue_env.config(sinks={"local": sink})
    good = [unique("good") for _ in range(3)]
    poison = [unique("poison") for _ in range(2)]
    server = LiveServer(config, plugins=[plugin]).start()
    try:
        for message_id in [good[0], poison[0], good[1], poison[1], good[2]]:
            post_each(server, [message_id], "poison" if message_id in poison else "ok")
    finally:
        server.stop()
    dead_queue = queue_env.dead_queue_name()
    with WorkerThread(config, plugins=[plugin]) as worker:
        eventually(lambda: ready(queue_env, dead_queue) == 2, "2 messages dead-lettered")
        eventually(lambda: len(plugin.stored) == 3, "the good events stored")
    consumer = worker.worker.consumers[0]
    assert sorted(plugin.stored) == sorted(good)
    assert (consumer.messages, consumer.dead_lettered, consumer.retries) == (5, 2, 1)
    assert ready(queue_env, queue_env.queue_name()) == 0

    letters = list_dead_letters(config, "local")
    assert list_dead_letters(config, "local") == letters  # listing leaves them as they were
    assert [letter.message_ids for letter in letters] == [[p] for p in poison]  # oldest first
    for letter in letters:
        assert letter.reason == "RuntimeError: poison event refused"
        assert letter.attempts == 3  # two for the batch, one alone
        assert letter.events == 1
        assert letter.dead_lettered_at
        assert letter.outcome is None
    [first] = list_dead_letters(config, "local", limit=1)
    assert first == letters[0]
    assert list_dead_letters(config, "local") == letters  # a partial walk too

    for message in peek(queue_env, dead_queue):
        headers = message.headers
        assert "poison event refused" in headers[broker.REASON_HEADER]
        assert headers[broker.SINK_HEADER] == "local"
        assert headers[broker.ATTEMPTS_HEADER] == 3
        assert headers[broker.FORMAT_HEADER] == broker.FORMAT  # the original headers stay
        assert message.content_type == broker.CONTENT_TYPE
        assert [c.event for c in decode_many(message.body)] == ["poison"]

    # Still broken: replay keeps both.
    kept = replay(config, "local", plugins=[plugin])
    assert [letter.outcome for letter in kept] == ["kept: RuntimeError: poison event refused"] * 2
    assert ready(queue_env, dead_queue) == 2

    poisoned["on"] = False
    replayed = replay(config, "local", plugins=[plugin])
    assert sorted(m for letter in replayed for m in letter.message_ids) == sorted(poison)
    assert [letter.outcome for letter in replayed] == ["replayed", "replayed"]
    assert sorted(plugin.stored) == sorted(good + poison)
    assert ready(queue_env, dead_queue) == 0
    assert list_dead_letters(config, "local") == []


def test_undecodable_messages_are_dead_lettered_and_kept_by_replay(queue_env):
    """Garbage, an unknown format version and a message without headers go to the
    dead-letter queue unchanged; ``replay`` cannot execute them and keeps them, and the
    command exits 1."""
    raw = queue_env.raw()
    config = queue_env.config()
    exchange, key = f"{queue_env.prefix}.events", "sink.local"
    valid = encode_many([command(unique("v2"))])
    bodies = [b"\xc1 not JSON nor msgpack \xff", valid, valid]
    publish_raw(queue_env, bodies[0], exchange=exchange, routing_key=key, headers=CURRENT_FORMAT)
    unknown_version = {broker.FORMAT_HEADER: "commands/9"}
    publish_raw(queue_env, bodies[1], exchange=exchange, routing_key=key, headers=unknown_version)
    # As a producer that is not kombu may send it: no headers, no content type.
    publish_raw(queue_env, bodies[2], exchange=exchange, routing_key=key, content_type=None)
    good = unique("good")
    body = encode_many([command(good)])
    publish_raw(queue_env, body, exchange=exchange, routing_key=key, headers=CURRENT_FORMAT)

    dead_queue = queue_env.dead_queue_name()
    with WorkerThread(config) as worker:
        eventually(lambda: ready(queue_env, dead_queue) == 3, "3 messages dead-lettered")
        eventually(lambda: queue_env.stored_ids() == [good], "the valid message stored")
    assert worker.worker.consumers[0].dead_lettered == 3

    letters = list_dead_letters(config, "local")
    assert len(letters) == 3
    reasons = sorted(letter.reason for letter in letters)
    assert all(reason.startswith("undecodable: ") for reason in reasons), reasons
    assert any("body is not a batch of commands" in reason for reason in reasons), reasons
    assert any("'commands/9'" in reason for reason in reasons), reasons
    assert any("None" in reason for reason in reasons), reasons
    assert {(letter.attempts, letter.events) for letter in letters} == {(0, None)}
    assert all(letter.message_ids == [] for letter in letters)

    outcomes = [letter.outcome for letter in replay(config, "local")]
    assert outcomes == ["kept: undecodable"] * 3
    assert ready(queue_env, dead_queue) == 3

    result = cli(queue_env.write_config(raw), "replay", "--sink", "local")
    assert result.returncode == 1, result
    assert result.stdout.count("undecodable: ") == 3, result.stdout
    assert "3 dead letter(s) for sink 'local': 0 replayed, 3 kept" in result.stdout
    assert ready(queue_env, dead_queue) == 3
    # Dead-lettered as they came: the bodies are byte for byte the ones published.
    assert sorted(m.body for m in peek(queue_env, dead_queue)) == sorted(bodies)
    assert queue_env.stored_ids() == [good]


def test_dead_letters_command_lists_and_replays(queue_env):
    """``eventrouter dead-letters list|replay`` as an operator runs it: valid commands put
    in the dead-letter queue are listed (text and JSON), left in place, then replayed
    into the SQLite store."""
    path = queue_env.write_config(queue_env.raw())
    ids = [unique("m") for _ in range(2)]
    for message_id in ids:
        headers = broker.dead_letter_headers(
            CURRENT_FORMAT, "local", "RuntimeError: warehouse was down", 5
        )
        publish_raw(
            queue_env,
            encode_many([command(message_id)]),
            exchange=f"{queue_env.prefix}.dead",
            routing_key="local",
            headers=headers,
        )

    listed = cli(path, "list", "--sink", "local")
    assert listed.returncode == 0, listed
    assert listed.stdout.count("RuntimeError: warehouse was down") == 2
    assert ids[0] in listed.stdout and ids[1] in listed.stdout
    assert "2 dead letter(s) for sink 'local'" in listed.stdout

    as_json = cli(path, "list", "--sink", "local", "--json", "--limit", "1")
    assert as_json.returncode == 0, as_json
    [letter] = json.loads(as_json.stdout)
    assert letter["reason"] == "RuntimeError: warehouse was down"
    assert letter["attempts"] == 5
    assert letter["events"] == 1
    assert letter["message_ids"] == ids[:1]
    assert letter["dead_lettered_at"]
    assert ready(queue_env, queue_env.dead_queue_name()) == 2

    replayed = cli(path, "replay", "--sink", "local")
    assert replayed.returncode == 0, replayed
    assert "2 dead letter(s) for sink 'local': 2 replayed, 0 kept" in replayed.stdout
    assert sorted(queue_env.stored_ids()) == sorted(ids)
    assert ready(queue_env, queue_env.dead_queue_name()) == 0

    empty = cli(path, "list", "--sink", "local", "--json")
    assert (empty.returncode, json.loads(empty.stdout)) == (0, [])

    unknown = cli(path, "list", "--sink", "nosuch")
    assert unknown.returncode == 2, unknown
    assert "'nosuch'" in unknown.stderr
