"""What every store's SQLAlchemy engine shares: JSON through msgspec, and a probe.

Each store makes its own engine (its pool, its connection settings, its file modes): the
built-in ones in ``sinks/sqlite_store.py``, ``sinks/postgres_store.py`` and
``sinks/clickhouse_store.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Engine

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
