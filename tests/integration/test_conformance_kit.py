"""The sink conformance kit (router_core/testing.py) on the sinks that need no service
(in integration/: its concurrent-writers case starts processes)."""

from __future__ import annotations

import pytest

from eventrouter.testing import SinkConformance

pytestmark = pytest.mark.slow


def test_the_file_sink_conforms(tmp_path, capsys):
    kit = SinkConformance("file", {"path": str(tmp_path / "events.jsonl"), "fsync": False})
    results = kit.check()
    table = capsys.readouterr().out
    assert "redelivered batch" in table and "stored twice (at_least_once)" in table
    assert all(r.passed for r in results)


def test_the_sqlite_sink_conforms(tmp_path, capsys):
    options = {"url": f"sqlite:///{tmp_path}/events.db", "indexes": ["message_id"]}
    results = SinkConformance("sqlite", options).check()
    assert "stored once" in capsys.readouterr().out
    assert all(r.passed for r in results)


def test_without_its_message_id_index_sqlite_says_it_is_at_least_once(tmp_path, capsys):
    results = SinkConformance("sqlite", {"url": f"sqlite:///{tmp_path}/events.db"}).check()
    assert "stored twice (at_least_once)" in capsys.readouterr().out
    assert all(r.passed for r in results)
