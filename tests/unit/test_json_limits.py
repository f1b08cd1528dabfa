"""``server.max_json_depth`` and ``server.max_json_keys``: configurable, checked on every
ingestion path before decoding, and exact at the boundary."""

from __future__ import annotations

import json
import random

import msgspec
import pytest

from eventrouter.config import ConfigError
from eventrouter.edge.limits import check_batch_structure, check_structure
from eventrouter.errors import InvalidEvent
from eventrouter.events.model import BatchBody
from tests.helpers import make_config
from tests.ingest_support import assert_error, post_raw

#: Every test runs with each body scanner (eventrouter.scan): compiled and pure Python.
pytestmark = pytest.mark.usefixtures("scanner")

JSON = {"Content-Type": "application/json"}


def test_lower_limits_from_the_config_apply_to_every_ingestion_path(start_server):
    server = start_server({"server": {"max_json_depth": 3, "max_json_keys": 3}})
    within = {"userId": "u", "event": "e", "properties": {"a": {"b": 1}, "c": 2}}
    assert server.post("/v1/track", within).status_code == 200
    deep = {**within, "properties": {"a": {"b": {"c": 1}}}}
    for path in ("/v1/track", "/v1/t", "/track"):
        assert_error(server.post(path, deep), 400, "too_deep", "body", "3 levels")
    batch = {
        "batch": [{"type": "track", "userId": "u", "event": "e"}],
        "context": {"x": 1, "y": 2, "z": 3, "w": 4},
    }
    assert_error(server.post("/v1/batch", batch), 400, "too_many_keys", "body", "3 keys")
    # Keys the decoder ignores count too.
    assert_error(
        post_raw(server, "/v1/identify", b'{"userId":"u","p":1,"q":2,"r":3}', JSON),
        400,
        "too_many_keys",
    )


@pytest.mark.parametrize("value", [0, 513])
def test_max_json_depth_out_of_range_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match=r"server\.max_json_depth"):
        make_config(tmp_path, {"server": {"max_json_depth": value}})


def shape_of(value, depth=1):
    """(deepest level, most keys in one object), walked without recursion."""
    deepest = keys = 0
    stack = [(value, depth)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            children = node.values() if isinstance(node, dict) else node
            if isinstance(node, dict):
                keys = max(keys, len(node))
            stack.extend((child, level + 1) for child in children)
    return deepest, keys


def random_json(rnd: random.Random, level: int = 0):
    roll = rnd.random()
    if level > 7 or roll < 0.3:
        return rnd.choice([1, "a", 'x:[{"}]\\', '\\"{', None, True, 2.5, "", "\\\\"])
    if roll < 0.65:
        keys = ["a", "b:", '"[', "{", "\\", "}"]
        return {
            f"{rnd.choice(keys)}{i}": random_json(rnd, level + 1) for i in range(rnd.randint(0, 5))
        }
    return [random_json(rnd, level + 1) for _ in range(rnd.randint(0, 4))]


def test_the_byte_scan_agrees_with_a_walk_of_the_decoded_value():
    rnd = random.Random(7)
    for _ in range(2000):
        value = random_json(rnd)
        body = json.dumps(value, ensure_ascii=rnd.random() < 0.5).encode()
        depth, keys = shape_of(value)
        for max_depth, max_keys in ((depth, keys), (depth - 1, keys), (depth, keys - 1)):
            if max_depth < 1 or max_keys < 1:
                continue
            expected = (
                "too_deep" if depth > max_depth else "too_many_keys" if keys > max_keys else None
            )
            try:
                check_structure(body, max_depth, max_keys)
                found = None
            except InvalidEvent as exc:
                found = exc.code
            assert found == expected, (body, max_depth, max_keys)


def refusal(check, *args) -> str | None:
    """The code ``check(*args)`` refuses with, or None."""
    try:
        check(*args)
    except InvalidEvent as exc:
        return exc.code
    return None


def test_the_per_item_batch_check_agrees_with_the_whole_body_check():
    """``check_batch_structure`` (each item on its own, then the rest of the body) refuses
    exactly the batch bodies that ``check_structure`` refuses, for the same reason when
    only one limit is passed."""
    rnd = random.Random(11)
    decoder = msgspec.json.Decoder(BatchBody)
    for _ in range(1500):
        items = [random_json(rnd) for _ in range(rnd.randint(1, 6))]
        body_value = {"batch": items}
        if rnd.random() < 0.4:
            body_value["context"] = {"c": random_json(rnd)}
        if rnd.random() < 0.3:
            body_value["zz"] = random_json(rnd)  # a key the decoder ignores
        body = json.dumps(body_value, ensure_ascii=rnd.random() < 0.5).encode()
        raw_items = decoder.decode(body).batch
        depth, keys = shape_of(body_value)
        for max_depth, max_keys in ((depth, keys), (depth - 1, keys), (depth, keys - 1)):
            if max_depth < 1 or max_keys < 1:
                continue
            whole = refusal(check_structure, body, max_depth, max_keys)
            per_item = refusal(check_batch_structure, body, raw_items, max_depth, max_keys)
            assert (whole is None) == (per_item is None), (body, max_depth, max_keys)
            if (depth > max_depth) != (keys > max_keys):  # one limit passed: one reason
                assert whole == per_item, (body, max_depth, max_keys)


def test_a_batch_nested_past_pythons_recursion_limit_is_too_deep(start_server):
    server = start_server({})
    deep = "[" * 5000 + "]" * 5000
    body = f'{{"batch":[{{"type":"track","userId":"u","event":"e","properties":{{"a":{deep}}}}}]}}'
    assert_error(post_raw(server, "/v1/batch", body.encode(), JSON), 400, "too_deep", "body")
