"""SQLAlchemy engines configured the way eventrouter's stores need them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from eventrouter.files import is_data_dir, private_dir, private_sqlite

_encoder = msgspec.json.Encoder()


def _json_dumps(value: Any) -> str:
    return _encoder.encode(value).decode()


def make_engine(
    url: str, *, synchronous: str = "NORMAL", postgres_settings: dict[str, str] | None = None
) -> Engine:
    """An engine whose JSON columns use msgspec; SQLite files get WAL and a busy timeout.

    In WAL mode ``synchronous=NORMAL`` makes a commit durable against any crash of the
    process (the WAL frames are in the OS before ``commit()`` returns); ``FULL`` also
    fsyncs each commit, so it survives power loss. ``postgres_settings`` are set on every
    PostgreSQL connection of the engine (``-c name=value``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "clickhouse":
        return _clickhouse_engine(parsed)
    kwargs: dict[str, Any] = {
        "json_serializer": _json_dumps,
        "json_deserializer": msgspec.json.decode,
    }
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # An in-memory database exists per connection: share one across threads.
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            database = Path(parsed.database)
            private_dir(database.parent, own=is_data_dir(database.parent))
    elif parsed.get_backend_name() == "postgresql":
        # Times are UTC everywhere; a naive bound parameter means UTC too.
        settings = {"timezone": "UTC", **(postgres_settings or {})}
        kwargs["connect_args"] = {"options": " ".join(f"-c {k}={v}" for k, v in settings.items())}
        kwargs["pool_pre_ping"] = True
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):

        @event.listens_for(engine, "do_connect")
        def _private(*_: Any) -> None:
            # Before SQLite creates the file: 0600 whatever the umask (its -wal and -shm
            # files take the database's mode), companions left from before tightened.
            private_sqlite(Path(parsed.database))

    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # The busy timeout first: switching a new file to WAL takes an exclusive
            # lock, and several server processes open the same file at start-up (two
            # gunicorn workers failed to boot with "database is locked" otherwise).
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

    return engine


def _json_or_none(value: str) -> Any:
    return msgspec.json.decode(value) if value else None


def _clickhouse_engine(url: URL) -> Engine:
    """clickhouse-sqlalchemy's engine takes no JSON hooks: JSON columns are ``String``
    there (``''`` when absent), decoded by the generic JSON type with the dialect's
    ``_json_deserializer``, which that dialect leaves unset."""
    engine = create_engine(url, pool_pre_ping=True)
    engine.dialect._json_serializer = _json_dumps
    engine.dialect._json_deserializer = _json_or_none
    return engine


def select_one(engine: Engine) -> None:
    """A round trip to the database (health probes)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL, or None for memory/non-SQLite URLs."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)
