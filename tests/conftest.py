from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import LiveServer, make_config


@pytest.fixture
def start_server(tmp_path) -> Iterator[Callable[..., LiveServer]]:
    """Start a live server with a config built from a raw dict (and extra plugins)."""
    servers: list[LiveServer] = []

    def start(raw: dict[str, Any] | None = None, plugins=(), **env: str) -> LiveServer:
        server = LiveServer(make_config(tmp_path, raw, **env), plugins=plugins).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server) -> LiveServer:
    """The embedded default (open ingestion, SQLite store in tmp_path)."""
    return start_server()
