"""The built-in ``file`` sink and a single-file plugin under ``eventrouter serve
--workers 2 --plugins-dir DIR``, end to end: two server processes append to one live
file (rotated by size meanwhile) while requests arrive at once; every kept event is
one whole JSON line, exactly once, and what the plugin drops is nowhere."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import HANG_GUARD, ServeProcess
from tests.queue_support import to_toml, unique

pytestmark = pytest.mark.slow

STAGE = """\
from eventrouter.bus.hookspecs import hookimpl


@hookimpl
def eventrouter_process_batch(commands, sink):
    if sink is not None:
        return None
    return [c for c in commands if not (c.user_id or "").startswith("bot-")]
"""


def test_two_processes_append_whole_lines_once(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "drop_bots.py").write_text(STAGE)
    path = tmp_path / "out" / "events.jsonl"
    sinks = {"archive": {"type": "file", "path": str(path), "rotate_bytes": 50_000}}
    config = tmp_path / "eventrouter.toml"
    config.write_text(to_toml({"sinks": sinks}))
    run = unique("file2")
    nasty = 'line\nbreak \u2028 "quoted" \\ é'
    requests = [
        [
            {
                "type": "track",
                "messageId": f"{run}-{r}-{n}",
                "userId": f"bot-{r}" if n == 0 else f"u{r}",
                "event": nasty,
                "properties": {"n": n, "pad": "x" * 200},
            }
            for n in range(10)
        ]
        for r in range(60)
    ]
    server = ServeProcess(
        tmp_path, "--config", str(config), "--plugins-dir", str(plugins), workers=2
    )
    try:
        server.wait_ready(timeout=60)

        def post(batch: list[dict]) -> int:
            with httpx.Client(timeout=HANG_GUARD) as client:  # a connection each
                return client.post(f"{server.url}/v1/batch", json={"batch": batch}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, requests))
        assert statuses == [200] * len(requests)
    finally:
        assert server.stop() == 0, server.log()

    files = sorted(path.parent.glob("events*.jsonl"))
    assert len(files) > 1, "rotated by size"
    lines = []
    for file in files:
        data = file.read_bytes()
        assert not data or data.endswith(b"\n"), f"{file.name}: a torn last line"
        lines += [line for line in data.split(b"\n") if line]
    events = [json.loads(line) for line in lines]  # every line is whole JSON
    ids = [event["message_id"] for event in events]
    kept = [
        item["messageId"] for batch in requests for item in batch if item["userId"][:4] != "bot-"
    ]
    assert len(ids) == len(set(ids)), "an event stored twice"
    assert sorted(ids) == sorted(kept)
    assert {event["event"] for event in events} == {nasty}
