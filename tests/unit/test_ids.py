"""Pooled random ids (router_core/events/ids.py): valid UUID v4s, never handed out twice, and
never shared with a forked worker."""

from __future__ import annotations

import os
import uuid

from eventrouter.events import ids


def test_message_ids_are_distinct_uuid4s_across_refills():
    made = [ids.new_message_id() for _ in range(3 * ids.POOL + 7)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_hex_ids_are_uuid4_hex():
    text = ids.new_hex_id()
    assert len(text) == 32
    assert uuid.UUID(text).hex == text
    assert uuid.UUID(text).version == 4


def test_a_forked_child_draws_from_a_pool_of_its_own():
    ids.new_message_id()  # the parent's pool now holds ids
    parents_next = list(ids._ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id, then leave at once
        os.close(read)
        os.write(write, ids.new_message_id().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        childs = pipe.read().decode()
    os.waitpid(pid, 0)
    assert uuid.UUID(childs).version == 4
    assert childs not in parents_next
