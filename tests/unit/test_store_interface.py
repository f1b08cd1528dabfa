"""Stores bring their own knowledge (eventrouter.store.interface).

- No module of ``router_core/`` checks a store by name: an AST scan fails on any string
  literal of a built-in store or dialect name that is compared, matched or looked up.
- Each built-in sink answers ``store()`` for itself: what it can query, erase and keep.
- A third-party store, the one docs/plugins.md shows under "Adding a store", taken from
  the page as written: as the admin store of a real server, the query API, the charts,
  the status page, a privacy deletion and the suppression list work on it, with no
  change to the core. Nothing mocked: SQLite in a temporary directory.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from eventrouter.bus.sink import Sink
from eventrouter.config import SinkConfig
from eventrouter.sinks.clickhouse import ClickHouseSink, ClickHouseStore
from eventrouter.sinks.postgres import PostgresSink, PostgresStore
from eventrouter.sinks.s3 import S3Sink
from eventrouter.sinks.sqlite import SQLiteSink, SQLiteStore
from eventrouter.store.interface import CannotErase, InvalidQuery
from eventrouter.store.query import EventFilter, EventStore, PathCondition
from tests.helpers import ADMIN_BEARER, LiveServer, eventually, make_config
from tests.ingest_support import uid
from tests.privacy_support import PrivacyPage, cells

ROOT = Path(__file__).resolve().parents[2]

# -- no core module checks a store by name ---------------------------------------------
#: A built-in store's sink type or SQLAlchemy dialect name, alone or at the head of a
#: URL scheme or driver name (``sqlite:///``, ``clickhouse+native``, ``s3://``).
STORE_NAME = re.compile(r"^(sqlite|postgres|postgresql|psycopg|clickhouse|s3)(?![a-z0-9])", re.I)
#: Methods whose string arguments match a value against a name.
MATCHING_METHODS = {"startswith", "endswith", "match", "fullmatch", "search"}


def _names_in(node: ast.AST) -> list[str]:
    """The store names among the string literals of ``node``, a literal or a tuple, list
    or set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if STORE_NAME.match(node.value) else []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [name for item in node.elts for name in _names_in(item)]
    return []


def _pattern_names(pattern: ast.pattern) -> list[str]:
    if isinstance(pattern, ast.MatchValue):
        return _names_in(pattern.value)
    if isinstance(pattern, ast.MatchOr):
        return [name for p in pattern.patterns for name in _pattern_names(p)]
    return []


def name_checks(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every check of a value against a store's name in ``source``:
    a comparison (``==``, ``!=``, ``in``, ``is``), a ``startswith``-style match, a
    ``case`` pattern, a dict keyed by the name or a subscript by it."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                names += _names_in(operand)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in MATCHING_METHODS:
                for argument in node.args:
                    names += _names_in(argument)
        elif isinstance(node, ast.match_case):
            names += _pattern_names(node.pattern)
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if key is not None:
                    names += _names_in(key)
        elif isinstance(node, ast.Subscript):
            names += _names_in(node.slice)
        if names:
            line = node.pattern.lineno if isinstance(node, ast.match_case) else node.lineno
            found += [(line, name) for name in names]
    return found


CHECKS = [
    'if sink.config.type == "clickhouse":\n    pass',
    'if "postgres" != store.type:\n    pass',
    'local = engine.dialect.name in ("sqlite", "postgresql")',
    'file = url.startswith("sqlite:")',
    "match kind:\n    case 'S3' | 'other':\n        pass",
    'reason = {"s3": "immutable"}[kind]',
    'engine = engines["clickhouse+native"]',
    'driver = re.match("psycopg", name)',
]
NOT_CHECKS = [
    'raise ValueError("sqlite: database is locked")',
    'log.warning("ClickHouse in embedded mode")',
    'DEFAULT = {"local": {"type": "sqlite", "url": "sqlite:///events.db"}}',
    'QUEUE = "queue"\nif kind == QUEUE:\n    pass',
    'if kind == "sqlite3ish":\n    pass',
]


@pytest.mark.parametrize("source", CHECKS)
def test_the_scan_finds_a_check_of_a_store_name(source):
    assert name_checks(source), source


@pytest.mark.parametrize("source", NOT_CHECKS)
def test_the_scan_leaves_messages_and_defaults_alone(source):
    assert name_checks(source) == []


def test_no_core_module_checks_a_store_by_name():
    """A store-specific branch in the core means a store module lacks a method: ask the
    store (``Sink.store()``, eventrouter.store.interface) instead."""
    found = []
    for path in sorted((ROOT / "router_core").rglob("*.py")):
        for line, name in name_checks(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(ROOT)}:{line}: {name!r}")
    assert found == [], "the core checks a store by name:\n" + "\n".join(found)


# -- each sink answers for itself ----------------------------------------------------------
def _sink(cls: type[Sink], options: dict) -> Sink:
    return cls("s", SinkConfig(type="x"), cls.Options(**options))


def test_each_built_in_sink_says_what_its_store_can_do(tmp_path):
    sqlite = _sink(SQLiteSink, {"url": f"sqlite:///{tmp_path}/events.db"}).store()
    postgres = _sink(PostgresSink, {"url": "postgresql+psycopg://u@127.0.0.1/db"}).store()
    clickhouse = _sink(ClickHouseSink, {"url": "clickhouse+native://u@127.0.0.1/db"}).store()
    assert (type(sqlite), type(postgres), type(clickhouse)) == (
        SQLiteStore,
        PostgresStore,
        ClickHouseStore,
    )
    for store in (sqlite, postgres, clickhouse):
        assert store.queryable
        assert store.admin_tables() is not None
        store.eraser().close()  # no I/O before it is used
    assert postgres.eraser().identity_rows and not sqlite.eraser().identity_rows
    assert not (tmp_path / "events.db").exists()  # nothing was opened

    archive = _sink(S3Sink, {"bucket": "archive"})
    assert not archive.queryable
    assert archive.store().admin_tables() is None
    with pytest.raises(CannotErase, match="S3 objects are immutable batches"):
        archive.store().eraser()


def test_a_sink_keeps_no_store_unless_it_says_so():
    class Archive(Sink):
        def write(self, commands):
            return None

    sink = Archive("a", SinkConfig(type="archive"), None)
    assert sink.store() is None
    assert not sink.queryable


def test_queryable_is_not_a_flag_a_sink_sets():
    """It used to be one, which silently required a ``url`` attribute: a sink that still
    sets it is told what to do instead, when its class is defined."""
    with pytest.raises(TypeError, match=r"returns a Store with a query dialect"):

        class Old(Sink):
            queryable = True


# -- a third-party store, as docs/plugins.md shows it -----------------------------------------
def docs_example(name: str) -> ModuleType:
    """The Python block of docs/plugins.md that starts with ``# {name}/__init__.py``,
    imported as module ``name``."""
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    (code,) = [block for block in blocks if block.startswith(f"# {name}/__init__.py")]
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(code, f"docs/plugins.md ({name})", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def litestore() -> ModuleType:
    module = docs_example("eventrouter_litestore")
    yield module
    sys.modules.pop("eventrouter_litestore", None)


def _track(server: LiveServer, user_id: str, plan: str, **fields) -> None:
    body = {"userId": user_id, "event": "Order Completed", "properties": {"plan": plan}}
    response = server.post("/v1/track", {**body, **fields})
    assert response.status_code == 200, response.text


def test_a_third_party_store_serves_the_api_the_dashboard_and_privacy(tmp_path, litestore):
    url = f"sqlite:///{tmp_path}/lite.db"
    config = make_config(
        tmp_path,
        {"sinks": {"notes": {"type": "lite", "url": url}}, "admin": {"store": "notes"}},
    )
    server = LiveServer(config, plugins=[litestore]).start()
    try:
        gone, kept = uid("gone"), uid("kept")
        _track(server, gone, "pro", anonymousId="a-gone")
        _track(server, kept, "free")
        server.post("/v1/alias", {"userId": gone, "previousId": "old-gone"})

        # The query API, path conditions included (the store's JSON access).
        assert [e["user_id"] for e in server.events(**{"properties.plan": "pro"})] == [gone]
        assert {e["user_id"] for e in server.events(event="Order Completed")} == {gone, kept}
        # The dashboard's charts (time buckets) and status page (no size in bytes here).
        chart = server.client.get("/admin/chart?range=24h", headers=ADMIN_BEARER)
        assert chart.status_code == 200, chart.text
        status = server.client.get("/admin/status", headers=ADMIN_BEARER)
        assert status.status_code == 200, status.text
        assert "notes (sqlite)" in status.text and "unknown" in status.text

        with PrivacyPage(server.url, bearer=True) as page:
            # Deletion through the store's eraser, the linked ids found by the core.
            review = page.review(gone)
            assert review.status_code == 200, review.text
            assert "old-gone" in review.text and "a-gone" in review.text
            deleted = page.reviewed_delete(gone)  # its confirmation spent in this store
            assert deleted.status_code == 200, deleted.text
            assert cells(deleted.text, "notes")["events"] == "2"
            assert cells(deleted.text, "notes")["users"] == "—"  # no identity rows here
            assert server.events(user_id=gone) == []
            assert [e["user_id"] for e in server.events()] == [kept]

            # The suppression list in the store's admin tables, read by the pipeline.
            suppressed = page.reviewed_change("suppress", "user_id", kept)
            assert suppressed.status_code == 200, suppressed.text
        eventually(
            lambda: kept in server.app.bus.pm.get_plugin("suppress:store").user_ids,
            "the suppression list re-read",
        )
        _track(server, kept, "dropped")
        assert {e["properties"]["plan"] for e in server.events(user_id=kept)} == {"free"}
    finally:
        server.stop()


def test_a_store_without_json_paths_answers_400_naming_the_parameter(tmp_path, litestore):
    """A store implements what its database can: without ``json_text``, a path
    condition is refused, the rest of the query API works."""

    class PlainDialect(litestore.LiteDialect):
        json_text = litestore.QueryDialect.json_text

    class PlainStore(litestore.LiteStore):
        def query_dialect(self):
            return PlainDialect(self.url)

    url = f"sqlite:///{tmp_path}/plain.db"
    store = EventStore(PlainStore(url))
    try:
        store.ensure_schema()  # the default: nothing (the sink creates the table)
        with pytest.raises(InvalidQuery) as refused:
            store.count(EventFilter(paths=[PathCondition("properties", ("plan",), "pro")]))
        assert refused.value.field == "paths"
        assert "path conditions are not supported on sqlite" in str(refused.value)
    finally:
        store.close()
