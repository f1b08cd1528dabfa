"""Fixtures every folder shares, and each test's markers, given by its folder.

The folder a test module is in says what the test needs (tests/README.md): ``unit``,
``integration``, ``browser`` or ``faults``. Each test gets its folder's marker, and every
test outside tests/unit also gets ``slow``, so ``-m "not slow"`` selects the unit tests
just as ``-m unit`` does. A test module directly under tests/, or a unit test marked
``slow`` by hand, stops the run with an error that names it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LiveServer, make_config

TESTS = Path(__file__).resolve().parent
#: The folders test modules live in; each is also the marker its tests get.
FOLDERS = ("unit", "integration", "browser", "faults", "cluster")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced: set[str] = set()
    for item in items:
        path = item.path.resolve()
        if not path.is_relative_to(TESTS):  # pytest run on a path outside tests/
            continue
        folder = path.relative_to(TESTS).parts[0]
        where = str(path.relative_to(TESTS.parent))
        if folder not in FOLDERS:
            misplaced.add(f"{where}: not in tests/{{{','.join(FOLDERS)}}}/")
        elif folder == "unit" and item.get_closest_marker("slow"):
            misplaced.add(f"{where}: a unit test marked slow (move it to tests/integration/)")
        else:
            item.add_marker(folder)
            if folder != "unit":
                item.add_marker("slow")
    if misplaced:
        raise pytest.UsageError(
            "test modules in the wrong place (tests/README.md says which folder holds what):\n  "
            + "\n  ".join(sorted(misplaced))
        )


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


#: The body scanner's implementations (eventrouter.scan): the compiled pass, skipped when
#: it was not built, and the pure-Python code that runs without it.
SCANNERS = [
    pytest.param(True, id="compiled"),
    pytest.param(False, id="pure"),
]


@pytest.fixture(params=SCANNERS)
def scanner(request) -> Iterator[bool]:
    """Run the test with each implementation of eventrouter.scan in this process (an
    in-process server included): ``True`` compiled, ``False`` pure Python."""
    from eventrouter import scan

    if request.param and not scan.available():
        pytest.skip("eventrouter._scan was not built")
    before = scan.COMPILED
    scan.use(request.param)
    try:
        yield request.param
    finally:
        scan.use(before)
