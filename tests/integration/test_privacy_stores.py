"""``eventrouter privacy`` on every SQL store (SQLite, PostgreSQL, ClickHouse), each in a
database of its own on the real servers of this machine:

- ``delete --user-id`` removes the user id's own events, and PostgreSQL's ``users`` and
  ``identities`` rows; the linked anonymous ids and aliased older ids are listed, and
  their events go only with ``--follow ID`` / ``--follow-all`` (an alias to someone
  else's id deletes nothing of theirs by default); other users' rows, a shared
  device's events of another user included, stay;
- the suppression list is kept in the store itself (ClickHouse: a ReplacingMergeTree),
  and the server drops a suppressed id's new events once it has read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from eventrouter.privacy import erasure
from eventrouter.privacy.suppressions import SuppressionList
from tests.helpers import ADMIN_TOKEN, LiveServer, eventually, make_config, run_eventrouter
from tests.queue_support import to_toml, unique
from tests.store_support import STORES, store_of, store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)


def dataset() -> list[dict]:
    def event(kind: str, message_id: str, **ids: str) -> dict:
        body = {"type": kind, "messageId": message_id, **ids}
        if kind == "track":
            body["event"] = "Viewed"
        return body

    return [
        # The user to delete: signed in on a device, aliased from an older id.
        event("track", "d-anon-1", anonymousId="a-del"),
        event("track", "d-anon-2", anonymousId="a-del"),
        event("identify", "d-identify", userId="u-del", anonymousId="a-del"),
        event("track", "d-track-1", userId="u-del"),
        event("track", "d-track-2", userId="u-del", anonymousId="a-del"),
        event("track", "d-old", userId="old-del"),
        event("alias", "d-alias", userId="u-del", previousId="old-del"),
        # Everyone else: another user on the same device, and an unrelated user.
        event("track", "k-shared", userId="u-other", anonymousId="a-del"),
        event("identify", "k-identify", userId="u-keep", anonymousId="a-keep"),
        event("track", "k-track", userId="u-keep"),
        event("track", "k-anon", anonymousId="a-keep"),
        # Someone else's id, aliased by a user who then asks to be deleted.
        event("track", "k-victim", userId="victim"),
        event("track", "k-victim-anon", anonymousId="victim"),
        event("alias", "m-alias", userId="mallory", previousId="victim"),
        event("track", "m-track", userId="mallory"),
    ]


DELETED = {"d-anon-1", "d-anon-2", "d-identify", "d-track-1", "d-track-2", "d-old", "d-alias"}
#: The user id's own events: what goes when no link is followed.
OWN = {"d-identify", "d-track-1", "d-track-2", "d-alias"}
KEPT = {"k-shared", "k-identify", "k-track", "k-anon", "k-victim", "k-victim-anon"}
MALLORY = {"m-alias", "m-track"}


class Store:
    def __init__(self, kind: str, sink: dict, server: LiveServer, config: Path) -> None:
        self.kind = kind
        self.sink = sink
        self.server = server
        self.config = str(config)


@pytest.fixture(scope="module", params=STORES)
def store(request, tmp_path_factory) -> Iterator[Store]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    with store_sink(request.param, tmp_path) as sink:
        raw = {"sinks": {"store": sink}, "privacy": {"refresh": "100ms"}}
        server = LiveServer(make_config(tmp_path, raw)).start()
        config = tmp_path / "eventrouter.toml"
        config.write_text(to_toml({**raw, "admin": {"token": ADMIN_TOKEN}}))
        try:
            response = server.post("/v1/batch", {"batch": dataset()})
            assert response.status_code == 200, response.text
            yield Store(request.param, sink, server, config)
        finally:
            server.stop()


def stored(store: Store) -> set[str]:
    return {event["message_id"] for event in store.server.events()}


def postgres_rows(store: Store, sql: str) -> list[tuple]:
    url = store.sink["url"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()


def test_delete_removes_the_user_and_leaves_everyone_else(store):
    assert stored(store) >= DELETED | KEPT
    dry = run_eventrouter(
        "privacy", "delete", "--user-id", "u-del", "--dry-run", "--json", "--config", store.config
    )
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["user_ids"], report["anonymous_ids"]) == (["u-del"], [])
    assert [(link["kind"], link["id"], link["followed"]) for link in report["linked"]] == [
        ("previous_id", "old-del", False),
        ("anonymous_id", "a-del", False),
    ]
    assert [link["events"] for link in report["linked"]] == [{"store": 1}, {"store": 2}]
    (preview,) = report["stores"]
    assert (preview["status"], preview["events"]) == ("would delete", len(OWN))
    dry = run_eventrouter(
        "privacy", "delete", "--user-id", "u-del", "--follow-all", "--dry-run", "--json",
        "--config", store.config,
    )  # fmt: skip
    report = json.loads(dry.stdout)
    assert report["user_ids"] == ["old-del", "u-del"]
    assert report["anonymous_ids"] == ["a-del", "old-del"]
    (preview,) = report["stores"]
    assert (preview["status"], preview["events"]) == ("would delete", len(DELETED))
    assert stored(store) >= DELETED

    result = run_eventrouter(
        "privacy", "delete", "--user-id", "u-del", "--follow", "old-del", "--follow", "a-del",
        "--config", store.config,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[-1]
    if store.kind == "postgres":
        assert line == (
            f"store (postgres): deleted {len(DELETED)} event(s), 1 user row(s), 2 identity row(s)"
        )
        assert postgres_rows(store, "SELECT user_id FROM users ORDER BY 1") == [("u-keep",)]
        everyone_else = "SELECT kind, identity, user_id FROM identities WHERE user_id <> 'mallory'"
        assert postgres_rows(store, everyone_else) == [("anonymous_id", "a-keep", "u-keep")]
    else:
        assert line == f"store ({store.kind}): deleted {len(DELETED)} event(s)"
    assert stored(store) & (DELETED | KEPT) == KEPT

    # Idempotent: a second request finds nothing left (in-process: the same code).
    again = erasure.delete_user(store.server.app.bus.sinks, "u-del", wait=60)
    assert [(s.status, s.events) for s in again.stores] == [("deleted", 0)]


def test_an_alias_is_not_followed_by_default(store):
    """``{"type": "alias", "userId": "mallory", "previousId": "victim"}``, then a deletion
    request for mallory: every one of victim's events stays."""
    assert stored(store) >= MALLORY | {"k-victim", "k-victim-anon"}
    dry = run_eventrouter(
        "privacy", "delete", "--user-id", "mallory", "--dry-run", "--config", store.config
    )
    assert dry.returncode == 0, dry.stderr
    assert (
        "  [ ] previous_id 'victim': aliased to the user (1 alias call(s))"
        + ("; a previous_id link in the identities table" if store.kind == "postgres" else "")
        + "; 2 more event(s) from default\n"
    ) in dry.stdout
    result = run_eventrouter("privacy", "delete", "--user-id", "mallory", "--config", store.config)
    assert result.returncode == 0, result.stderr
    assert f"store ({store.kind}): deleted 2 event(s)" in result.stdout
    assert not stored(store) & MALLORY
    assert stored(store) >= {"k-victim", "k-victim-anon"}


def test_suppression_list_in_the_store(store):
    suppressions = SuppressionList(store_of(store.sink))
    suppressor = store.server.app.bus.pm.get_plugin("suppress:store")
    user = unique("u-")
    try:
        assert suppressions.add("user_id", user, "request 1") is True
        assert suppressions.add("user_id", user, "again") is False
        assert suppressions.add("anonymous_id", "a-" + user) is True
        listed = {(s.kind, s.id): s.reason for s in suppressions.list()}
        assert listed[("user_id", user)] == "request 1"
        eventually(lambda: user in suppressor.user_ids, "the server read the list")

        dropped = {"type": "track", "event": "Viewed", "userId": user, "messageId": unique("s")}
        assert store.server.post("/v1/track", dropped).status_code == 200
        assert dropped["messageId"] not in stored(store)

        assert suppressions.remove("user_id", user) is True
        assert suppressions.remove("user_id", user) is False
        assert ("user_id", user) not in {(s.kind, s.id) for s in suppressions.list()}
        eventually(lambda: user not in suppressor.user_ids, "the server read the change")
        back = {**dropped, "messageId": unique("s")}
        assert store.server.post("/v1/track", back).status_code == 200
        assert back["messageId"] in stored(store)
    finally:
        suppressions.close()
