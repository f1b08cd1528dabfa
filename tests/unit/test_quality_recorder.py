"""The quality plugin's in-memory counts: paths and types of hostile payloads, bounded
memory, and counts kept across a flush the store refused (a real SQLite store whose
directory is missing, then made)."""

from __future__ import annotations

from datetime import UTC, datetime

from eventrouter.plugins import quality
from eventrouter.plugins.quality import Recorder, walk
from eventrouter.quality.plans import Violation
from eventrouter.sinks.sqlite_store import SQLiteStore

NOW = datetime.now(UTC).replace(microsecond=0)


def test_walk_names_every_path_with_its_type():
    paths: dict = {}
    walk(
        {
            "a": 1,
            "b": 1.5,
            "c": None,
            "d": [{"sku": "x"}, {"sku": 2}],
            "e": {"f": True},
            "<script>": "x",
        },
        "",
        paths,
        0,
    )
    assert paths == {
        ("a", "integer"): 1,
        ("b", "number"): 1,
        ("c", "null"): 1,
        ("d", "array"): 1,
        ("d[]", "object"): 2,
        ("d[].sku", "string"): 1,
        ("d[].sku", "integer"): 1,
        ("e", "object"): 1,
        ("e.f", "boolean"): 1,
        ("<script>", "string"): 1,
    }


def test_deep_objects_stop_at_the_depth_limit():
    value: dict = {}
    node = value
    for _ in range(50):
        node["k"] = {}
        node = node["k"]
    paths: dict = {}
    walk(value, "", paths, 0)
    assert max(path.count(".") for path, _ in paths) == quality.MAX_DEPTH - 1


def test_counts_survive_a_flush_the_store_refused(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the store's directory should be")
    store = SQLiteStore(f"sqlite:///{blocker}/events.db")
    recorder = Recorder(store.quality_tables(), 10.0)
    recorder.count_paths(("web", "track", "E"), {("", "event"): 2, ("a", "integer"): 2}, NOW)
    assert recorder.flush() is False  # the directory cannot exist: nothing written
    assert recorder.failures.count == 1
    recorder.count_paths(("web", "track", "E"), {("", "event"): 1}, NOW)
    blocker.unlink()
    blocker.mkdir()
    assert recorder.flush() is True
    rows = {(r.path, r.count) for r in store.quality_tables().catalogue("web", None)}
    assert rows == {("", 3), ("a", 2)}
    recorder.stop()


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(quality, "MAX_KEYS", 3)
    recorder = Recorder(None, 10.0)
    recorder.count_paths(("s", "track", "E"), {(f"p{i}", "string"): 1 for i in range(10)}, NOW)
    assert len(recorder.catalogue) == 3 and recorder.overflow == 7
    violation = Violation("properties.x", "type", "m")
    assert recorder.flush() is True  # no store: nothing to write, nothing kept
    _ = violation
