"""``eventrouter upload``: a real CLI process against a real server on loopback.

What a user sees: the exit code, the summary (each bad line by its line number and
reason), and the rows in the store.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import LiveServer, free_port, make_config, run_eventrouter

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

WRITE_KEY = "backend-key"
SOURCES = {"sources": [{"name": "backend", "write_key": WRITE_KEY}]}
REJECTION = re.compile(r"^  (line|item) (\d+): (\w+): (.*)$", re.MULTILINE)


@pytest.fixture
def keyed_server(tmp_path) -> LiveServer:
    server = LiveServer(make_config(tmp_path, SOURCES)).start()
    yield server
    server.stop()


def stored(data_dir: Path) -> list[tuple[str, str, int]]:
    """``(source, message_id, properties.n)`` of every row in the embedded store, read
    straight from SQLite (100k rows through the paginated query API would dominate the
    test's runtime; the smaller tests read through ``server.events()``)."""
    with sqlite3.connect(data_dir / "events.db") as connection:
        return connection.execute(
            "SELECT source, message_id, json_extract(properties, '$.n') FROM events"
        ).fetchall()


def rejections(output: str) -> dict[int, tuple[str, str]]:
    return {int(m[2]): (m[3], m[4]) for m in REJECTION.finditer(output)}


def upload(path: Path, host: str, *extra: str, key: str | None = WRITE_KEY, **env: str):
    args = ["upload", str(path), "--host", host, "--no-progress", *extra]
    if key is not None:
        args += ["--write-key", key]
    return run_eventrouter(*args, env=env)


def good(n: int) -> str:
    return json.dumps(
        {"type": "track", "userId": f"u{n % 97}", "event": "e", "properties": {"n": n}}
    )


#: The bad lines of the 100k file, by kind: (line text, expected code).
BAD_KINDS = [
    ('{"type": "track", "userId": "u1", "event": ', "invalid_json"),
    ("[1, 2, 3]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    ('{"type": "track", "userId": "u1", "properties": {}}', "missing_field"),  # no event
    ('{"type": "track", "event": "anonymous"}', "missing_field"),  # no user/anonymous id
    ('{"type": "shout", "userId": "u1"}', "invalid_type"),
    (
        json.dumps(
            {"type": "track", "userId": "u1", "event": "big", "properties": {"x": "x" * 40_000}}
        ),
        "event_too_large",
    ),
]


def test_100k_line_file_stores_every_good_line_and_names_each_bad_one(keyed_server, tmp_path):
    total_lines = 100_000
    bad_lines = {3 + i * 3331: BAD_KINDS[i % len(BAD_KINDS)] for i in range(30)}
    blank_lines = {2, 50_001, total_lines}
    with (tmp_path / "events.ndjson").open("w") as file:
        for n in range(1, total_lines + 1):
            if n in blank_lines:
                file.write("\n")
            else:
                file.write((bad_lines[n][0] if n in bad_lines else good(n)) + "\n")
    good_lines = set(range(1, total_lines + 1)) - set(bad_lines) - blank_lines

    result = upload(tmp_path / "events.ndjson", keyed_server.url, "--batch-events", "2500")

    assert result.returncode == 1, result.stderr
    assert f"accepted: {len(good_lines)}\nrejected: 30\n" in result.stdout
    reported = rejections(result.stdout)
    assert {n: code for n, (code, _) in reported.items()} == {
        n: code for n, (_, code) in bad_lines.items()
    }
    assert all(message for _, message in reported.values())
    assert reported[3 + 3 * 3331][1] == "event: required field is missing"
    assert reported[3 + 4 * 3331][1] == "userId or anonymousId: one of them is required"
    rows = stored(tmp_path)
    assert len(rows) == len(good_lines)
    assert {n for _, _, n in rows} == good_lines
    assert {source for source, _, _ in rows} == {"backend"}
    assert len({message_id for _, message_id, _ in rows}) == len(rows)


def test_clean_json_array_exits_0_with_the_key_from_the_environment(keyed_server, tmp_path):
    events = [{"type": "identify", "userId": "ada", "traits": {"plan": "pro"}}] + [
        {"type": "track", "userId": "ada", "event": f"e{i}"} for i in range(5)
    ]
    (tmp_path / "events.json").write_text(json.dumps(events, indent=2))
    result = upload(
        tmp_path / "events.json", keyed_server.url, key=None, EVENTROUTER_WRITE_KEY=WRITE_KEY
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "accepted: 6\nrejected: 0\n"
    assert result.stderr == ""  # no progress bar: stderr is not a terminal
    stored_events = keyed_server.events(user_id="ada")
    assert sorted(e["type"] for e in stored_events) == ["identify"] + ["track"] * 5
    assert {e["source"] for e in stored_events} == {"backend"}


def test_json_batch_document_reports_rejections_by_array_index(keyed_server, tmp_path):
    batch = [
        {"type": "track", "userId": "bo", "event": "ok"},
        {"type": "track", "userId": "bo"},
        17,
        {"type": "page", "userId": "bo", "name": "Home"},
    ]
    (tmp_path / "batch.txt").write_text(json.dumps({"batch": batch}))
    result = upload(tmp_path / "batch.txt", keyed_server.url)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("accepted: 2\nrejected: 2\n")
    assert rejections(result.stdout) == {
        1: ("missing_field", "event: required field is missing"),
        2: ("not_an_object", "expected a JSON object, got number"),
    }
    assert "  item 1: " in result.stdout
    assert sorted(e["type"] for e in keyed_server.events(user_id="bo")) == ["page", "track"]


def test_unreadable_file_exits_2(keyed_server, tmp_path):
    missing = upload(tmp_path / "nope.ndjson", keyed_server.url)
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr and "nope.ndjson" in missing.stderr
    directory = upload(tmp_path, keyed_server.url)
    assert directory.returncode == 2
    (tmp_path / "broken.json").write_text('[{"type": "track",')
    broken = upload(tmp_path / "broken.json", keyed_server.url)
    assert broken.returncode == 2
    assert "broken.json: not valid JSON" in broken.stderr
    (tmp_path / "object.json").write_text('{"type": "track"}')
    assert upload(tmp_path / "object.json", keyed_server.url).returncode == 2
    assert keyed_server.events() == []


def test_bad_batch_size_is_a_usage_error(keyed_server, tmp_path):
    (tmp_path / "one.ndjson").write_text(good(1) + "\n")
    result = upload(tmp_path / "one.ndjson", keyed_server.url, "--batch-events", "2501")
    assert result.returncode == 2
    assert "--batch-events" in result.stderr


def test_refused_write_key_exits_2_without_sending_the_rest(keyed_server, tmp_path):
    (tmp_path / "e.ndjson").write_text("".join(good(n) + "\n" for n in range(10)))
    result = upload(tmp_path / "e.ndjson", keyed_server.url, "--batch-events", "3", key="wrong")
    assert result.returncode == 2
    assert "writeKey refused (HTTP 401)" in result.stderr
    assert "nothing from line 1 on was sent" in result.stderr
    assert keyed_server.events() == []


def test_unreachable_host_exits_3(tmp_path):
    (tmp_path / "e.ndjson").write_text(good(1) + "\n" + good(2) + "\n")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = upload(tmp_path / "e.ndjson", closed, "--retries", "2")
    assert result.returncode == 3, result.stderr
    assert f"POST {closed}/v1/import failed after 3 attempt(s)" in result.stderr
    assert "ConnectError" in result.stderr
    assert "nothing from line 1 on was sent" in result.stderr
