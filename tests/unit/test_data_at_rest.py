"""Data at rest (issue 18, item 9), in this process:

- an existing data directory or database with looser modes is tightened, with a
  warning; a directory the operator chose for something else is left alone; a new
  database directory is created ``0700``;
- the IP anonymiser's cache, and the trusted-proxy check's, hold addresses only: a
  million distinct junk ``context.ip`` strings pin nothing.

Under a umask (``022`` and ``000``), in subprocesses: a real ``serve`` and the spool write
nothing others can read (tests/integration/test_data_at_rest_umask.py).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from eventrouter.edge.proxies import TrustedProxies
from eventrouter.events import ipanon
from tests.helpers import LiveServer, make_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    """Every directory and file under ``root`` (itself included) with its mode."""
    found = {".": mode(root)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = mode(path)
    return found


def assert_private(root: Path) -> dict[str, int]:
    found = modes_under(root)
    for name, bits in found.items():
        wanted = 0o700 if (root / name).is_dir() else 0o600
        assert bits == wanted, f"{name} is {bits:04o}, not {wanted:04o} ({found})"
    return found


# -- what was there before -----------------------------------------------------------------------
def test_a_looser_data_directory_and_database_are_tightened(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    for name in ("events.db", "events.db-wal", "events.db.lock"):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    monkeypatch.setenv("EVENTROUTER_DATA_DIR", str(data))
    with caplog.at_level(logging.WARNING, logger="eventrouter.files"):
        server = LiveServer(make_config(data)).start()
        try:
            body = {"userId": "u", "event": "After"}
            assert server.post("/v1/track", body).status_code == 200
            assert_private(data)
        finally:
            server.stop()
    assert f"directory {data} was mode 0755: tightened to 0700" in caplog.text
    assert f"file {data / 'events.db'} was mode 0644: tightened to 0600" in caplog.text


def test_a_directory_the_operator_chose_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("EVENTROUTER_DATA_DIR", str(tmp_path / "data"))
    shared = tmp_path / "srv"
    shared.mkdir()
    os.chmod(shared, 0o755)
    url = f"sqlite:///{shared}/events.db"
    server = LiveServer(make_config(tmp_path, {"sinks": {"local": {"type": "sqlite", "url": url}}}))
    server.start()
    try:
        assert server.post("/v1/track", {"userId": "u", "event": "E"}).status_code == 200
        assert mode(shared) == 0o755
        # while it runs (a clean close removes the -wal and -shm files)
        for name in ("events.db", "events.db-wal", "events.db-shm", "events.db.lock"):
            assert mode(shared / name) == 0o600, name
    finally:
        server.stop()


def test_a_new_database_directory_is_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("EVENTROUTER_DATA_DIR", str(tmp_path / "data"))
    url = f"sqlite:///{tmp_path}/elsewhere/deeper/events.db"
    server = LiveServer(make_config(tmp_path, {"sinks": {"local": {"type": "sqlite", "url": url}}}))
    server.start()
    try:
        assert server.post("/v1/track", {"userId": "u", "event": "E"}).status_code == 200
        found = assert_private(tmp_path / "elsewhere" / "deeper")
        assert {"events.db", "events.db-wal", "events.db-shm"} <= set(found)
    finally:
        server.stop()


# -- caches that hold addresses only ------------------------------------------------------------
def junk(n: int):
    """``n`` distinct strings that are not IP addresses, of every kind a client can send:
    text, hex digits and dots that almost parse, a too-long run of address characters."""
    for i in range(n):
        kind = i % 4
        if kind == 0:
            yield f"not-an-ip-{i}"
        elif kind == 1:
            yield f"{i:x}"  # address characters, no address
        elif kind == 2:
            yield f"1.2.3.{256 + i}"  # an octet out of range
        else:
            yield f"{i}:" * 12  # longer than any address


def test_junk_addresses_are_not_cached():
    ipanon._truncate.cache_clear()
    context: dict = {}
    for value in junk(100_000):
        context["ip"] = value
        ipanon.apply(context, ipanon.TRUNCATE)
        assert "ip" not in context  # junk cannot be truncated: dropped
    info = ipanon._truncate.cache_info()
    assert info.currsize == 0, info  # nothing remembered
    # real addresses are still anonymised, and their cache stays bounded
    for i in range(10_000):
        address = f"10.{i // 256 % 256}.{i % 256}.77"
        assert ipanon.truncate(address) == f"10.{i // 256 % 256}.{i % 256}.0"
    assert ipanon.truncate("2001:db8:abcd:12::1") == "2001:db8:abcd::"
    assert ipanon._truncate.cache_info().currsize == ipanon.CACHE_SIZE


def test_forwarded_junk_is_not_cached_by_the_proxy_check():
    proxies = TrustedProxies(["10.0.0.0/8"])
    for value in junk(100_000):
        assert not proxies.trusts(value)
    assert not proxies.trusts("fe80::1%" + "a" * 10_000)
    assert proxies._cache == {}
    assert proxies.trusts("10.1.2.3") and not proxies.trusts("192.0.2.1")
    assert proxies._cache == {"10.1.2.3": True, "192.0.2.1": False}
