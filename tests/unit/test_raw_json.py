"""The free-form fields as raw JSON, edge to store (router_core/events/commands.py,
model.py's RawDecoder, normalise.py's rules on raw text).

What a user sees: the bytes a client sent for ``properties`` are the bytes stored; the
rules that must change a field (``context.ip``, a page's ``name``) still hold, with no
way for duplicate keys or escaped key names to carry a second address past
anonymisation; what the edge refused before (a non-object, a number no float holds) it
still refuses, with the same 400; a stage still gets dicts and changes them as before.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventrouter.events import commands as c
from tests.ingest_support import post_raw, uid

JSON = {"Content-Type": "application/json"}


def stored_text(data_dir: Path, user_id: str, column: str) -> str:
    """The TEXT the SQLite store in ``data_dir`` holds in ``column`` for ``user_id``'s
    one event."""
    with sqlite3.connect(data_dir / "events.db") as connection:
        [(text,)] = connection.execute(
            f"SELECT {column} FROM events WHERE user_id = ?",  # column: a fixed name
            (user_id,),
        ).fetchall()
    return text


def pairs(text: str) -> list[tuple[str, Any]]:
    """The members of a JSON object, duplicates kept (``json.loads`` keeps the last)."""
    return json.loads(text, object_pairs_hook=list)


def test_properties_are_stored_as_sent(server, tmp_path):
    user = uid()
    sent = b'{ "plan" : "pro",\n  "note": "caf\\u00e9 \\"q\\" \\/", "n": 1.50, "big": 1e300 }'
    body = b'{"userId":"%s","event":"Bought","properties":%s}' % (user.encode(), sent)
    assert post_raw(server, "/v1/track", body, JSON).status_code == 200
    assert stored_text(tmp_path, user, "properties").encode() == sent
    [event] = server.events(user_id=user)
    assert event["properties"] == {"plan": "pro", "note": 'café "q" /', "n": 1.5, "big": 1e300}


@pytest.mark.parametrize(
    ("context", "stored_ip"),
    [
        # As a dict decode reads them (as the edge always did): the last key wins.
        (b'{"ip":"198.51.100.9","ip":"203.0.113.77"}', "203.0.113.0"),
        (b'{"ip":"198.51.100.9","\\u0069p":"203.0.113.77"}', "203.0.113.0"),
        (b'{"\\u0069p":"203.0.113.77"}', "203.0.113.0"),
        (b'{"ip":"203.0.113.77", "sessionId":"s", "ip" : "203.0.113.78"}', "203.0.113.0"),
        (b'{"a":"ip","b":"\\"ip\\"","ip":"203.0.113.77"}', "203.0.113.0"),
    ],
)
def test_duplicate_or_escaped_ip_keys_cannot_pass_anonymisation(
    start_server, tmp_path, context, stored_ip
):
    server = start_server({"privacy": {"ip": "truncate"}})
    user = uid()
    body = b'{"userId":"%s","event":"e","context":%s}' % (user.encode(), context)
    assert post_raw(server, "/v1/track", body, JSON).status_code == 200
    text = stored_text(tmp_path, user, "context")
    assert [value for key, value in pairs(text) if key == "ip"] == [stored_ip], text
    for address in ("198.51.100.9", "203.0.113.77", "203.0.113.78"):
        assert address not in text
    assert server.events(user_id=user)[0]["context"]["ip"] == stored_ip


def test_dropped_ip_is_gone_whatever_its_spelling(start_server, tmp_path):
    server = start_server({"privacy": {"ip": "drop"}})
    user = uid()
    context = b'{"ip":"203.0.113.77","\\u0069p":"198.51.100.9","ip":"192.0.2.1"}'
    body = b'{"userId":"%s","event":"e","context":%s}' % (user.encode(), context)
    assert post_raw(server, "/v1/track", body, JSON).status_code == 200
    text = stored_text(tmp_path, user, "context")
    assert [key for key, _ in pairs(text)] == []
    assert "198.51.100.9" not in text and "192.0.2.1" not in text


def test_connection_ip_is_added_to_a_context_without_one(server, tmp_path):
    """The context's own values keep the client's bytes (``{ "a" : 1 }`` here); its
    top level is written again with the connection's ip."""
    user = uid()
    body = b'{"userId":"%s","event":"e","context":{ "locale" : "en-GB", "n": { "a" : 1 } }}' % (
        user.encode()
    )
    assert post_raw(server, "/v1/track", body, JSON).status_code == 200
    text = stored_text(tmp_path, user, "context")
    assert text == '{"locale":"en-GB","n":{ "a" : 1 },"ip":"127.0.0.1"}'
    assert pairs(text) == [("locale", "en-GB"), ("n", [("a", 1)]), ("ip", "127.0.0.1")]


def test_batch_context_is_merged_with_item_keys_winning(server, tmp_path):
    user = uid()
    body = {
        "context": {"library": {"name": "batch"}, "locale": "fr"},
        "batch": [
            {"type": "track", "userId": user, "event": "a", "context": {"locale": "en"}},
            {"type": "track", "userId": user, "event": "b"},
        ],
    }
    assert server.post("/v1/batch", body).status_code == 200
    contexts = {e["event"]: e["context"] for e in server.events(user_id=user)}
    assert contexts["a"] == {"library": {"name": "batch"}, "locale": "en", "ip": "127.0.0.1"}
    assert contexts["b"] == {"library": {"name": "batch"}, "locale": "fr", "ip": "127.0.0.1"}


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/track", b'{"userId":"u","event":"e","properties":{"a":[1e400]}}', "properties"),
        ("/v1/identify", b'{"userId":"u","traits":{"a":-1e999}}', "traits"),
        ("/v1/page", b'{"userId":"u","context":{"n":%s}}' % (b"1" * 5000), "context"),
        (
            "/v1/track",
            b'{"userId":"u","event":"e","properties":{"n":1%se99}}' % (b"0" * 250),
            "properties",
        ),
        ("/v1/batch", b'{"batch":[{"type":"track","userId":"u","event":"e","properties":7}]}', ""),
    ],
)
def test_what_no_store_could_read_back_is_still_refused(server, tmp_path, path, body, where):
    response = post_raw(server, path, body, JSON)
    assert response.status_code == 400, response.text
    if path == "/v1/batch":
        [rejected] = response.json()["rejected"]
        assert rejected["message"].startswith("properties: Expected `object | null`")
    else:
        assert response.json()["message"].startswith(f"{where}[")
    assert server.events() == []


def test_a_number_like_text_in_a_string_is_not_refused(server, tmp_path):
    user = uid()
    body = b'{"userId":"%s","event":"e","properties":{"v":"1e400 and 1E-999","id":"c2e-0000"}}' % (
        user.encode()
    )
    assert post_raw(server, "/v1/track", body, JSON).status_code == 200
    assert server.events(user_id=user)[0]["properties"] == {
        "v": "1e400 and 1E-999",
        "id": "c2e-0000",
    }


# -- the contract for stages --------------------------------------------------------------
def command(**fields: Any) -> c.TrackCommand:
    now = datetime.now(UTC)
    return c.TrackCommand(
        message_id="m", source="s", event="e", timestamp=now, received_at=now, **fields
    )


def test_reading_a_field_decodes_it_once():
    cmd = command(properties=msgspec.Raw(b'{"a": [1, 2]}'))
    assert cmd.properties == {"a": [1, 2]}
    assert cmd.properties is cmd.properties  # kept: the second read is free
    assert cmd.context == {}
    assert bytes(cmd.values()[10]) == b'{"a": [1, 2]}'  # the sink gets the text as sent


def test_a_replaced_field_is_encoded_and_the_others_keep_their_bytes():
    cmd = command(
        properties=msgspec.Raw(b'{"password": "x", "a": 1}'),
        context=msgspec.Raw(b'{ "ip" : "1.2.3.4" }'),
    )
    changed = msgspec.structs.replace(cmd, properties={"a": 1})
    assert changed.properties == {"a": 1}
    assert bytes(changed.properties_json) == b'{"a":1}'
    assert bytes(changed.context_json) == b'{ "ip" : "1.2.3.4" }'
    assert cmd.properties == {"password": "x", "a": 1}  # the original is unchanged
    decoded = c.decode_many(c.encode_many([changed]))[0]
    assert decoded.properties == {"a": 1}
    assert decoded.context == {"ip": "1.2.3.4"}


def test_a_command_cannot_be_changed_in_place():
    cmd = command()
    with pytest.raises(AttributeError):
        cmd.properties = {"a": 1}


def test_a_message_decoded_into_dicts_normalises_the_same():
    """A caller outside the edge may decode with the dict-typed Structs: same command."""
    from eventrouter.events import model
    from eventrouter.events.normalise import Arrival, to_command

    body = b'{"userId":"u","name":"Home","properties":{"path":"/"},"context":{"a":1}}'
    env = Arrival(received_at=datetime.now(UTC), source="web", ip="10.0.0.1")
    strict = to_command(msgspec.json.decode(body, type=model.Page), env, "page")
    raw = to_command(model.SINGLE_DECODERS["page"].decode(body), env, "page")
    assert strict.properties == raw.properties == {"name": "Home", "path": "/"}
    assert strict.context == raw.context == {"ip": "10.0.0.1", "a": 1}
