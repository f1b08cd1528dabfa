"""Shared pieces of the queue-pipeline suites: real RabbitMQ and Redis, nothing mocked.

Every test gets its own ``[queue] prefix`` (so its exchanges and queues are its own)
and its own dedup key prefix; the fixtures delete what the test declared afterwards.
Workers run either in a thread of the test process (``WorkerThread``: test-only sink
types can be passed as plugins) or as a real ``eventrouter worker`` subprocess
(``WorkerProcess``: signals, two processes sharing a queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from eventrouter.config import Config
from eventrouter.quality.cli import toml_key, toml_value
from eventrouter.queue.worker import Worker
from tests.helpers import ADMIN_TOKEN, HANG_GUARD, CommandProcess, make_config, unique

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: Redis databases: 5 for the Redis transport, 6 for dedup keys.
REDIS_QUEUE_URL = "redis://127.0.0.1:6379/5"
DEDUP_URL = "redis://127.0.0.1:6379/6"
TRANSPORTS = {"amqp": AMQP_URL, "redis": REDIS_QUEUE_URL}
#: Each transport's server port on loopback (for a TcpProxy that cuts it off).
SERVICE_PORTS = {"amqp": 5672, "redis": 6379}


def via(url: str, port: int) -> str:
    """``url`` with its loopback service port replaced by ``port`` (a TcpProxy's)."""
    for service_port in SERVICE_PORTS.values():
        url = url.replace(f"127.0.0.1:{service_port}", f"127.0.0.1:{port}")
    return url


class QueueEnv:
    """One test's broker namespace: ``raw()`` builds configs that use it."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.transport = "redis" if url.startswith("redis") else "amqp"
        self.prefix = unique("ert")
        self.dedup_prefix = unique("dedup")
        self.tmp_path = tmp_path
        self.db_path = tmp_path / "events.db"
        self.sinks: set[str] = {"local"}

    def raw(
        self,
        *,
        dedup: bool = False,
        sinks: dict[str, dict[str, Any]] | None = None,
        queue: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A raw config dict: ``[queue]`` on this namespace, an SQLite sink ``local``
        (idempotent: ``message_id`` indexed) unless ``sinks`` is given."""
        if sinks is None:
            sinks = {
                "local": {
                    "type": "sqlite",
                    "url": f"sqlite:///{self.db_path}",
                    "indexes": ["message_id", "user_id"],
                }
            }
        self.sinks |= set(sinks)
        raw: dict[str, Any] = {
            "queue": {
                "url": self.url,
                "prefix": self.prefix,
                **(queue or {}),
                "spool": {"dir": str(self.tmp_path / "spool"), **(queue or {}).get("spool", {})},
            },
            "sinks": sinks,
            "admin": {"token": ADMIN_TOKEN},
            **extra,
        }
        if dedup:
            raw["dedup"] = {"url": DEDUP_URL, "prefix": self.dedup_prefix}
        return raw

    def config(self, **kwargs: Any) -> Config:
        return make_config(self.tmp_path, self.raw(**kwargs))

    def write_config(self, raw: dict[str, Any], name: str = "eventrouter.toml") -> Path:
        path = self.tmp_path / name
        path.write_text(to_toml(raw), encoding="utf-8")
        return path

    # -- looking at what happened ------------------------------------------------------
    def stored_ids(self, db_path: Path | None = None) -> list[str]:
        """Every ``message_id`` in the SQLite store, duplicates included."""
        path = db_path or self.db_path
        if not path.exists():
            return []
        with sqlite3.connect(path, timeout=30) as connection:
            try:
                rows = connection.execute("SELECT message_id FROM events").fetchall()
            except sqlite3.OperationalError:  # table not created yet
                return []
        return [row[0] for row in rows]

    def stored_rows(self, db_path: Path | None = None) -> list[dict[str, Any]]:
        """Every event in the SQLite store: ``message_id`` and the JSON columns, decoded
        from the TEXT the store holds."""
        with sqlite3.connect(db_path or self.db_path, timeout=30) as connection:
            rows = connection.execute(
                "SELECT message_id, properties, traits, context FROM events"
            ).fetchall()
        names = ("properties", "traits", "context")
        return [
            {
                "message_id": row[0],
                **{n: v and json.loads(v) for n, v in zip(names, row[1:], strict=True)},
            }
            for row in rows
        ]

    def queue_name(self, sink: str = "local") -> str:
        return f"{self.prefix}.sink.{sink}"

    def dead_queue_name(self, sink: str = "local") -> str:
        return f"{self.prefix}.sink.{sink}.dead"

    def connection(self) -> Connection:
        return Connection(self.url, connect_timeout=5)

    def cleanup(self) -> None:
        if self.transport == "amqp":
            try:
                with self.connection() as connection:
                    channel = connection.channel()
                    for sink in self.sinks:
                        channel.queue_delete(self.queue_name(sink))
                        channel.queue_delete(self.dead_queue_name(sink))
                    channel.exchange_delete(f"{self.prefix}.events")
                    channel.exchange_delete(f"{self.prefix}.dead")
            except Exception:  # the broker is down: the test failed already
                pass
        else:
            client = redis.Redis.from_url(self.url)
            for key in client.scan_iter(f"*{self.prefix}*"):
                client.delete(key)
            client.close()
        client = redis.Redis.from_url(DEDUP_URL)
        for key in client.scan_iter(f"{self.dedup_prefix}:*"):
            client.delete(key)
        client.close()


@pytest.fixture(params=sorted(TRANSPORTS))
def queue_env(request, tmp_path) -> Iterator[QueueEnv]:
    """A broker namespace on RabbitMQ and on Redis (each test runs on both)."""
    env = QueueEnv(TRANSPORTS[request.param], tmp_path)
    yield env
    env.cleanup()


@pytest.fixture
def amqp_env(tmp_path) -> Iterator[QueueEnv]:
    """A broker namespace on RabbitMQ only (confirms, broker restarts)."""
    env = QueueEnv(AMQP_URL, tmp_path)
    yield env
    env.cleanup()


class WorkerThread:
    """A :class:`Worker` running its own event loop in a thread of the test process."""

    def __init__(
        self, config: Config, *, plugins: Sequence[Any] = (), sinks: Sequence[str] | None = None
    ) -> None:
        self.worker = Worker(config, plugins=plugins, sinks=sinks)
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            await self.worker.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by stop()
            self._error = exc
            self._ready.set()

    def start(self) -> WorkerThread:
        self._thread.start()
        assert self._ready.wait(HANG_GUARD), "worker thread did not start"
        return self

    def stop(self) -> None:
        if self._stop is not None and self.worker.loop is not None:
            # A worker that stopped by itself (Worker.fail) has closed its loop already.
            with contextlib.suppress(RuntimeError):
                self.worker.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(HANG_GUARD)
        assert not self._thread.is_alive(), "worker did not stop"
        if self._error is not None:
            raise self._error

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class WorkerProcess(CommandProcess):
    """A real ``eventrouter worker`` in a subprocess."""

    def __init__(self, config_path: Path, *args: str) -> None:
        super().__init__(
            ["worker", "--config", str(config_path), *args],
            config_path.parent,
            {**os.environ, "EVENTROUTER_ADMIN_TOKEN": ADMIN_TOKEN},
            config_path.parent / f"worker-{unique()}.log",
        )


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for test configs (tables, strings, numbers, booleans, lists)."""
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        else:
            # A key that is not bare (librdkafka's "max.poll.interval.ms") is quoted.
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, table in tables:
        out += f"\n[{name}]\n" + to_toml(table, f"{name}.")
    return out
