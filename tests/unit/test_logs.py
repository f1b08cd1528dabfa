"""Logs: JSON lines when asked for, and the request id on every line written for a
request, echoed to the client in ``X-Request-ID``.

A real ``eventrouter serve`` writing JSON lines: tests/integration/test_logs_serve.py."""

from __future__ import annotations

import json
import logging

import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.logs import JsonFormatter
from tests.helpers import LiveServer, make_config


class BrokenStage:
    """A pipeline plugin that fails: the bus logs it and passes the batch on."""

    @hookimpl
    def eventrouter_process_batch(self, commands, sink):
        raise RuntimeError("stage exploded")


@pytest.fixture
def json_records():
    """Every log record of this process, formatted as the JSON log format writes it."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)


def test_a_line_logged_for_a_request_carries_its_id(tmp_path, json_records):
    server = LiveServer(make_config(tmp_path), plugins=[BrokenStage()]).start()
    try:
        response = server.post(
            "/v1/track", {"userId": "u", "event": "E"}, headers={"X-Request-ID": "req-42"}
        )
        assert response.status_code == 200  # a failing stage passes the batch on
        assert response.headers["X-Request-ID"] == "req-42"
    finally:
        server.stop()
    entries = [json.loads(line) for line in json_records]
    failed = [e for e in entries if "pipeline stage failed" in e["message"]]
    assert failed, entries
    # the request's events were dispatched in a group: its line names every request
    assert "req-42" in failed[0]["request_id"].split(",")
    assert failed[0]["level"] == "ERROR"
    assert "stage exploded" in failed[0]["exception"]
    # lines not written for a request carry none
    assert all("request_id" not in e for e in entries if "Application startup" in e["message"])


@pytest.mark.parametrize("sent", [None, "", "has spaces", "x" * 200, "a/b"])
def test_a_missing_or_odd_request_id_is_replaced(server, sent):
    headers = {"X-Request-ID": sent} if sent is not None else {}
    response = server.client.get("/health", headers=headers)
    rid = response.headers["X-Request-ID"]
    assert rid != sent and len(rid) == 32 and int(rid, 16) >= 0
