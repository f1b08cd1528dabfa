"""Shared pieces of the ingestion and query-API suites (test_ingest, test_batch, ...).

Starting a live server costs a few hundred milliseconds, so most tests in those files
share one server per module and keep apart by sending their own unique user id and
reading back only ``server.events(user_id=...)``. Tests that look at *everything* stored
(``nothing was stored``) or need their own config use the per-test ``server`` /
``start_server`` fixtures from conftest.py instead.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import ADMIN_TOKEN, LiveServer, make_config

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def running(data_dir: Path, raw: dict[str, Any] | None = None) -> Iterator[LiveServer]:
    """A live server for a module-scoped fixture."""
    server = LiveServer(make_config(data_dir, raw)).start()
    try:
        yield server
    finally:
        server.stop()


def uid(prefix: str = "u") -> str:
    """A user id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def parse_time(value: str) -> datetime:
    """A time as the query API shows it (``2025-05-28T04:17:35.000Z``) as an aware datetime."""
    assert value.endswith("Z"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def iso(value: datetime) -> str:
    """An aware datetime as a Segment client would send it."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


def the_event(server: LiveServer, **filters: Any) -> dict[str, Any]:
    """The one stored event matching ``filters`` (fails if there are none or several)."""
    found = server.events(**filters)
    assert len(found) == 1, found
    return found[0]


def post_raw(
    server: LiveServer,
    path: str,
    content: bytes | str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """POST bytes exactly as given, with exactly the given headers (no Content-Type
    unless one is passed)."""
    return server.client.post(path, content=content, headers=headers or {}, **kwargs)


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level)


def assert_error(response: httpx.Response, status: int, code: str, *names: str) -> dict:
    """The response is ``status`` with a JSON ``{"code", "message"}`` whose message
    names every one of ``names``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    for name in names:
        assert name in body["message"], (name, body)
    return body
