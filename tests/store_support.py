"""Every SQL store the query layer serves, each in a database of its own for one test
module: SQLite in a temporary directory, PostgreSQL and ClickHouse on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from clickhouse_driver import Client

from eventrouter.privacy.suppressions import SuppressionList
from eventrouter.sinks.clickhouse_store import ClickHouseStore
from eventrouter.sinks.postgres import PostgresOptions, PostgresSink
from eventrouter.sinks.postgres_store import PostgresStore
from eventrouter.sinks.sqlite_store import SQLiteStore, ensure_rollup, write_retrying
from eventrouter.store.interface import Store
from eventrouter.store.query import EventStore
from tests.helpers import LiveServer, eventually, make_config
from tests.queue_support import unique

STORES = ["sqlite", "postgres", "clickhouse"]
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
CLICKHOUSE_ADMIN = "clickhouse://default:@127.0.0.1:9000/default"


#: The built-in stores by sink type (``Sink.store()`` gives the same for a running sink).
STORE_TYPES = {"sqlite": SQLiteStore, "postgres": PostgresStore, "clickhouse": ClickHouseStore}


def store_of(sink: dict[str, Any]) -> Store:
    """The store of a ``[sinks.NAME]`` table of a built-in SQL type (its ``url``)."""
    return STORE_TYPES[sink["type"]](sink["url"])


@contextlib.contextmanager
def store_sink(kind: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A ``[sinks.NAME]`` table for a fresh database of ``kind``, dropped afterwards."""
    database = None
    if kind == "sqlite":
        sink = {"type": "sqlite", "url": f"sqlite:///{tmp_path}/events.db"}
    elif kind == "clickhouse":
        database = unique("ert_")  # created by the sink's start-up
        sink = {"type": "clickhouse", "url": f"clickhouse+native://default:@127.0.0.1/{database}"}
    elif kind == "postgres":
        database = unique("ert_")
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {database}")
        sink = {"type": "postgres", "url": f"postgresql+psycopg://postgres@127.0.0.1/{database}"}
    else:
        raise ValueError(kind)
    try:
        yield sink
    finally:
        if database is not None and kind == "clickhouse":
            client = Client.from_url(CLICKHOUSE_ADMIN)
            client.execute(f"DROP DATABASE IF EXISTS {database}")
            client.disconnect()
        elif database is not None:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
                connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


class ServedStore:
    """A live server writing to one store sink, with two readers of that store:
    ``reader`` reads the rollups wherever they answer, ``scanner`` always ``events``
    (tests/integration/test_rollups.py, test_rollup_paths.py)."""

    def __init__(self, kind: str, sink: dict[str, Any], server: LiveServer) -> None:
        self.kind, self.sink, self.server = kind, sink, server
        self.store = store_of(sink)
        self.reader = EventStore(self.store)
        self.scanner = EventStore(self.store, use_rollup=False)

    def post(self, batch: list[dict]) -> None:
        response = self.server.post("/v1/batch", {"batch": batch})
        assert response.status_code == 200, response.text

    @contextlib.contextmanager
    def suppressing(self, user_id: str) -> Iterator[None]:
        """``user_id`` on the store's suppression list, read by the server, until the
        block ends."""
        suppressions = SuppressionList(self.store)
        suppressor = self.server.app.bus.pm.get_plugin("suppress:store")
        try:
            suppressions.add("user_id", user_id, "test")
            eventually(lambda: user_id in suppressor.user_ids, "the server read the list")
            yield
        finally:
            suppressions.remove("user_id", user_id)
            suppressions.close()

    def migrate(self, *, users: bool = False, paths: Sequence[str] = ()) -> str:
        """What ``eventrouter migrate`` runs with ``unique_users = users`` and
        ``rollup_paths = paths``: SQLite's rollups under the writers' lock (with the
        sink's ``indexes``: ``event_users_daily`` with ``event_user``), or the
        PostgreSQL sink's migration."""
        if self.kind == "sqlite":
            engine = self.store.engine()
            daily = users and "event_user" in self.sink.get("indexes", ())

            def migrate() -> str:
                with engine.begin() as connection:
                    changes = ensure_rollup(connection, users=users, paths=paths, daily=daily)
                    return ", ".join(changes) or "up to date"

            try:
                return write_retrying(self.sink["url"], migrate)
            finally:
                engine.dispose()
        options = PostgresOptions(url=self.sink["url"], unique_users=users, rollup_paths=[*paths])
        sink = PostgresSink("store", self.server.config, options)
        try:
            return sink.migrate()
        finally:
            sink.stop()


S = TypeVar("S", bound=ServedStore)


@contextlib.contextmanager
def served_store(
    kind: str, tmp_path: Path, batch: list[dict], cls: type[S] = ServedStore, **options: Any
) -> Iterator[S]:
    """A server on a fresh store of ``kind`` (the sink's ``options`` added) holding
    ``batch``, as a ``cls``; redelivered copies are refused by every store (SQLite's
    unique index)."""
    with store_sink(kind, tmp_path) as sink:
        if kind == "sqlite":
            sink["indexes"] = ["message_id", "user_id", "event"]
        sink.update(options)
        raw = {"sinks": {"store": sink}, "privacy": {"refresh": "100ms"}}
        served = cls(kind, sink, LiveServer(make_config(tmp_path, raw)).start())
        try:
            served.post(batch)
            yield served
        finally:
            served.reader.close()
            served.scanner.close()
            served.server.stop()
