"""The minimal sink of docs/plugins.md ("A minimal sink"), run exactly as printed.

The code block is read from the page, checked to be at most 15 lines, executed as a
module of its own and registered on a live server like an installed plugin: the events
posted to the server must reach the file the sink writes.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

from tests.helpers import LiveServer

PLUGINS_MD = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def minimal_sink_source() -> str:
    """The first ``python`` block under the heading "A minimal sink"."""
    text = PLUGINS_MD.read_text(encoding="utf-8")
    section = text[text.index("### A minimal sink") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_minimal_sink_is_at_most_15_lines():
    source = minimal_sink_source()
    assert len(source.splitlines()) <= 15, source
    assert "class JSONLinesSink(Sink)" in source
    assert "def eventrouter_sink_types" in source


def test_the_minimal_sink_gets_the_events(start_server, tmp_path, monkeypatch):
    module = types.ModuleType("eventrouter_jsonl")
    exec(compile(minimal_sink_source(), str(PLUGINS_MD), "exec"), module.__dict__)
    monkeypatch.chdir(tmp_path)  # the sink writes NAME.jsonl in the working directory
    server: LiveServer = start_server({"sinks": {"archive": {"type": "jsonl"}}}, plugins=[module])

    batch = [
        {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m1"},
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "messageId": "m2"},
    ]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    assert (
        server.post("/v1/track", {"userId": "u2", "event": "E", "messageId": "m3"}).status_code
        == 200
    )

    # Acknowledging (the default): each 200 came after the write returned.
    rows = [json.loads(line) for line in (tmp_path / "archive.jsonl").read_text().splitlines()]
    assert [row["message_id"] for row in rows] == ["m1", "m2", "m3"]
    assert rows[0]["event"] == "Signed Up"
    assert rows[1]["traits"] == {"plan": "pro"}
    assert server.components()["sink:archive"]["stats"]["events"] == 3
