"""Every SQL store the query layer serves, each in a database of its own for one test
module: SQLite in a temporary directory, PostgreSQL and ClickHouse on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from clickhouse_driver import Client

from tests.queue_support import unique

STORES = ["sqlite", "postgres", "clickhouse"]
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
CLICKHOUSE_ADMIN = "clickhouse://default:@127.0.0.1:9000/default"


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
