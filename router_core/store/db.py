"""What every store's SQLAlchemy engine shares: JSON through msgspec, and a probe.

Each store makes its own engine (its pool, its connection settings, its file modes): the
built-in ones in ``sinks/sqlite_store.py``, ``sinks/postgres_store.py`` and
``sinks/clickhouse_store.py``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import Engine

if TYPE_CHECKING:
    from eventrouter.store.sql import SQLStore

_encoder = msgspec.json.Encoder()


def json_dumps(value: Any) -> str:
    return _encoder.encode(value).decode()


def json_options() -> dict[str, Any]:
    """``create_engine`` keyword arguments that read and write JSON columns with msgspec."""
    return {"json_serializer": json_dumps, "json_deserializer": msgspec.json.decode}


def select_one(engine: Engine) -> None:
    """A round trip to the database (health probes)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")


class StoreEngine:
    """A store's engine made on first use and disposed on :meth:`close`, shared by the
    threads of one process: the base of the tables a store keeps beside ``events``
    (the admin tables, the data-quality tables)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self.store.engine()
            return self._engine

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
