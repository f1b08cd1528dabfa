"""Data at rest under a umask (issue 18, item 9): under ``022`` and ``000``, in
subprocesses, the data directory and every directory eventrouter makes are ``0700``,
every file it writes (the SQLite database with its ``-wal``, ``-shm`` and lock, the
spool's segments and locks) is ``0600``, and ``serve``'s metrics directory is ``0700``.

A real ``eventrouter serve`` (gunicorn, two workers) and a spool in a fresh interpreter,
each started under the umask. What happens to modes that were there before, and the
address caches: tests/unit/test_data_at_rest.py.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.admin_support import sign_in
from tests.helpers import HANG_GUARD, ServeProcess
from tests.unit.test_data_at_rest import assert_private, mode

UMASKS = [0o022, 0o000]


# -- under a umask, in subprocesses -------------------------------------------------------------
@pytest.mark.parametrize("umask", UMASKS, ids=["umask-022", "umask-000"])
def test_serve_writes_nothing_others_can_read(tmp_path, umask):
    data = tmp_path / "data"  # does not exist yet: serve creates it
    metrics_dir = tmp_path / "metrics"
    env = {"EVENTROUTER_DATA_DIR": str(data), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    serve = ServeProcess(tmp_path, env=env, workers=2, umask=umask).wait_ready()
    try:
        for i in range(5):
            body = {"userId": f"u{i}", "event": "Private"}
            response = httpx.post(f"{serve.url}/v1/track", json=body, timeout=HANG_GUARD)
            assert response.status_code == 200, response.text
        cookie = sign_in(serve.url)  # a sign-out writes the admin store too
        with httpx.Client(base_url=serve.url, cookies={"eventrouter_session": cookie}) as c:
            page = c.get("/admin/events").text
            csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
            assert c.post("/admin/logout", data={"csrf_token": csrf}).status_code == 303
        found = assert_private(data)
        assert {"events.db", "events.db-wal", "events.db-shm", "events.db.lock"} <= set(found)
        assert mode(metrics_dir) == 0o700
    finally:
        serve.stop()


SPOOL_SCRIPT = """
import os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
from eventrouter.queue.spool import Spool
spool = Spool(Path(sys.argv[1]), 1 << 20)
for _ in range(3):
    spool.append(1, b"an event the broker did not take")
"""


@pytest.mark.parametrize("umask", UMASKS, ids=["umask-022", "umask-000"])
def test_spool_segments_and_locks_are_private(tmp_path, umask):
    root = tmp_path / "data" / "spool"
    subprocess.run(
        [sys.executable, "-c", SPOOL_SCRIPT, str(root), f"{umask:o}"],
        check=True,
        timeout=HANG_GUARD,
    )
    found = assert_private(root)
    assert any(name.endswith(".seg") for name in found), found
    assert any(name.endswith("lock") for name in found), found
