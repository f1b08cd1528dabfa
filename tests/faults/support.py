"""The fault-injection suite's load and its counting.

:class:`Load` behaves like the Segment SDKs: each client thread sends ``/v1/batch`` bodies
of fresh ``messageId``s and retries a ``503`` or a dropped connection with the very same
body, and records every ``messageId`` answered ``200``. After the fault, a case counts
what the store holds: every acknowledged event must be there exactly once.

Every case records its figures with :func:`report` (the ``fault_report`` fixture); they
are printed at the end of the run (``pytest_terminal_summary`` in ``conftest.py``) and,
with ``EVENTROUTER_FAULTS_REPORT=FILE``, written to ``FILE`` as JSON. docs/reliability.md
quotes them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

from tests.helpers import eventually
from tests.queue_support import unique

#: The longest a case waits for the pipeline to store every acknowledged event after its
#: fault ended (hang guard, not a measurement: the time taken is recorded instead).
SETTLE_GUARD = 120.0


class Load:
    """SDK-like clients sending batches until :meth:`stop` (or ``max_batches`` each)."""

    def __init__(
        self,
        url: str,
        *,
        clients: int = 4,
        size: int = 10,
        pause: float = 0.02,
        max_batches: int = 2000,
        retry_refused: bool = True,
        resend_every: int = 0,
    ) -> None:
        """:param retry_refused: retry a refused or dropped connection (a restarting
        broker behind a live API); ``False`` stops the client instead (the API itself
        went away). :param resend_every: every N-th acknowledged batch is sent once more,
        as an SDK does when a response was lost: dedup must store it once."""
        self.url = url
        self.size = size
        self.pause = pause
        self.max_batches = max_batches
        self.retry_refused = retry_refused
        self.resend_every = resend_every
        self.acknowledged: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.transport_errors = 0
        self.resent = 0
        self.slowest = 0.0  # from the first attempt of a batch to its 200
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Load:
        """No new batches; a batch in flight is still retried until acknowledged."""
        self._stop.set()
        for thread in self._threads:
            thread.join(SETTLE_GUARD)
        assert not any(thread.is_alive() for thread in self._threads), "a client hung"
        return self

    def wait_acknowledged(self, count: int) -> None:
        def enough() -> bool:
            assert not self.failures, self.failures[:3]
            return len(self.acknowledged) >= count

        eventually(enough, f"{count} events acknowledged")

    def _client(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for sent in range(self.max_batches):
                if self._stop.is_set():
                    return
                ids = [unique(f"f{number}-{sent}-") for _ in range(self.size)]
                body = {
                    "batch": [
                        {"type": "track", "event": "Fault", "userId": f"u{number}", "messageId": i}
                        for i in ids
                    ]
                }
                if not self._send(http, body):
                    return
                with self._lock:
                    self.acknowledged.extend(ids)
                if self.resend_every and sent % self.resend_every == 0:
                    self._send(http, body)  # the SDK never saw the first 200
                    self.resent += 1
                time.sleep(self.pause)

    def _send(self, http: httpx.Client, body: dict[str, Any]) -> bool:
        """Post until a 200 (True); False if the client must give up."""
        started = time.monotonic()
        while time.monotonic() - started < SETTLE_GUARD:
            try:
                response = http.post("/v1/batch", json=body)
            except httpx.TransportError:
                with self._lock:
                    self.transport_errors += 1
                if not self.retry_refused:
                    return False
                time.sleep(0.1)
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
            if response.status_code == 200:
                self.slowest = max(self.slowest, time.monotonic() - started)
                return True
            if response.status_code != 503:
                self.failures.append(f"{response.status_code}: {response.text[:200]}")
                return False
            assert response.headers.get("Retry-After"), response.headers
            time.sleep(0.1)
        self.failures.append("a batch was never acknowledged")
        return False


# -- counting what was stored -----------------------------------------------------------------
def stored(sink: dict[str, Any]) -> Counter[str]:
    """How many rows each ``message_id`` has in the sink's store (SQLite, PostgreSQL or
    ClickHouse), read directly rather than through eventrouter."""
    kind, url = sink["type"], sink["url"]
    query = "SELECT message_id FROM events"
    if kind == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return Counter()
        with sqlite3.connect(path, timeout=30) as connection:
            try:
                return Counter(row[0] for row in connection.execute(query))
            except sqlite3.OperationalError:  # no table yet
                return Counter()
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    if kind == "postgres":
        dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
        with psycopg.connect(dsn) as connection:
            try:
                return Counter(row[0] for row in connection.execute(query))
            except psycopg.errors.UndefinedTable:  # the sink has not started yet
                return Counter()
    client = Client(host="127.0.0.1", port=9000, database=database)
    try:
        return Counter(row[0] for row in client.execute(query))
    except ClickHouseError as exc:
        if exc.code in (60, 81):  # unknown table or database: the sink has not started yet
            return Counter()
        raise
    finally:
        client.disconnect()


def settle(load: Load, sinks: dict[str, dict[str, Any]]) -> float:
    """Wait until every sink holds every acknowledged event; the seconds it took."""
    started = time.monotonic()
    want = set(load.acknowledged)
    pending = dict(sinks)
    while pending:
        for name, sink in list(pending.items()):
            if want <= set(stored(sink)):
                del pending[name]
        if not pending:
            break
        if time.monotonic() - started > SETTLE_GUARD:  # a hang guard, not a measurement
            missing = {name: len(want - set(stored(sink))) for name, sink in pending.items()}
            pytest.fail(f"acknowledged events never stored: {missing}")
        time.sleep(0.25)
    return time.monotonic() - started


def assert_exactly_once(load: Load, sinks: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Every acknowledged event stored once in every sink; the rows per sink."""
    rows = {}
    for name, sink in sinks.items():
        counts = stored(sink)
        twice = [message_id for message_id, n in counts.items() if n > 1]
        assert not twice, f"{name}: {len(twice)} events stored more than once: {twice[:3]}"
        missing = set(load.acknowledged) - set(counts)
        assert not missing, f"{name}: {len(missing)} acknowledged events lost"
        rows[name] = sum(counts.values())
    return rows


def report(records: list[dict[str, Any]], case: str, load: Load, **figures: Any) -> None:
    records.append(
        {
            "case": case,
            "acknowledged": len(load.acknowledged),
            "answers_503": load.statuses.get(503, 0),
            "dropped_connections": load.transport_errors,
            "slowest_200_s": round(load.slowest, 2),
            **figures,
        }
    )
