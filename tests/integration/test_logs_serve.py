"""Logs of a real ``eventrouter serve`` (gunicorn, two workers): with
``server.log_format = "json"`` every line, the arbiter's and each worker's, is one JSON
object. The request ids in them: tests/unit/test_logs.py."""

from __future__ import annotations

import json

import httpx

from tests.helpers import ServeProcess


def test_serve_writes_json_lines(tmp_path):
    path = tmp_path / "eventrouter.toml"
    path.write_text('[server]\nlog_format = "json"\n', encoding="utf-8")
    serve = ServeProcess(tmp_path, "--config", str(path), workers=2).wait_ready()
    try:
        response = httpx.post(f"{serve.url}/v1/track", json={"event": "no user"})
        assert response.status_code == 400
    finally:
        assert serve.stop() == 0
    lines = [line for line in serve.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "message", "process"} <= set(entries[0])
    assert any(e["logger"] == "gunicorn.error" for e in entries)
    assert any("no [[sources]] configured" in e["message"] for e in entries)
    assert len({e["process"] for e in entries}) >= 3  # the arbiter and both workers
