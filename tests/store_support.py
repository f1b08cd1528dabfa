"""Every SQL store the query layer serves, each in a database of its own for one test
module: SQLite in a temporary directory, PostgreSQL and ClickHouse on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from clickhouse_driver import Client

from eventrouter.sinks.clickhouse_store import ClickHouseStore
from eventrouter.sinks.postgres_store import PostgresStore
from eventrouter.sinks.sqlite_store import SQLiteStore
from eventrouter.store.interface import Store
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
