"""Erasure follows links only when told (docs/privacy.md#linked-ids).

Anyone who can send an event can alias any id to any other: ``{"type": "alias",
"userId": "mallory", "previousId": "victim"}`` must not turn a deletion request for
``mallory`` into the erasure of ``victim``. So:

- by default only the user id's own data goes; every linked id (aliased older ids,
  anonymous ids, PostgreSQL ``identities`` links) is listed on the review page, with a
  checkbox, how it is linked, the events it would take, and a flag when the link
  crosses sources;
- a ticked id is followed, and only that one (the confirmation binds the ticked set);
- the CLI follows ``--follow ID`` and ``--follow-all``, and ``--dry-run`` lists them.

Events go in through the real ingest path (a live server, writeKeys of two sources);
the embedded SQLite store, and PostgreSQL for ``identities``. Nothing mocked.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from eventrouter.privacy import erasure
from tests.helpers import ADMIN_TOKEN, LiveServer, make_config, run_eventrouter
from tests.privacy_support import PrivacyPage, cells, linked, token_of
from tests.queue_support import to_toml
from tests.store_support import store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

SOURCES = [
    {"name": "web", "write_key": "wk-web"},
    {"name": "backend", "write_key": "wk-backend"},
]


def event(kind: str, message_id: str, **fields: Any) -> dict[str, Any]:
    body = {"type": kind, "messageId": message_id, **fields}
    if kind == "track":
        body.setdefault("event", "Viewed")
    return body


def send(server: LiveServer, source: str, *events: dict[str, Any]) -> None:
    response = server.post("/v1/batch", {"batch": list(events)}, auth=(f"wk-{source}", ""))
    assert response.status_code == 200, response.text


def stored(server: LiveServer) -> set[str]:
    return {e["message_id"] for e in server.events()}


#: The victim's data: signed-in events, and one from before they signed in.
VICTIM = {"v-track-1", "v-track-2", "v-identify"}
VICTIM_ANONYMOUS = {"v-anon"}
#: Mallory's own events: the alias that names the victim, and one track call.
MALLORY = {"m-alias", "m-track"}


def victim_and_mallory(
    server: LiveServer, *, alias: str = "web", mallory: str = "web", victim: str = "web"
) -> None:
    send(
        server,
        victim,
        event("track", "v-track-1", userId="victim"),
        event("track", "v-track-2", userId="victim"),
        event("identify", "v-identify", userId="victim", anonymousId="a-victim"),
        event("track", "v-anon", anonymousId="a-victim"),
    )
    send(server, mallory, event("track", "m-track", userId="mallory"))
    send(server, alias, event("alias", "m-alias", userId="mallory", previousId="victim"))


@pytest.fixture
def server(start_server) -> LiveServer:
    return start_server({"sources": SOURCES, "privacy": {"refresh": "100ms"}})


# -- the dashboard --------------------------------------------------------------------------
def test_an_alias_to_the_victim_leaves_every_victim_event_by_default(server):
    victim_and_mallory(server)
    everyone = VICTIM | VICTIM_ANONYMOUS | MALLORY
    assert stored(server) == everyone
    with PrivacyPage(server.url) as page:
        review = page.review("mallory")
        assert review.status_code == 200, review.text
        links = linked(review.text)
        assert set(links) == {"victim"}
        assert links["victim"] == {
            "kind": "previous_id",
            "how": "aliased to the user (1 alias call(s))",
            "events": "3",
            "sources": "web",
            "link_sources": "web",
            "flag": "",
            "checked": False,
        }
        assert cells(review.text, "local")["events"] == "2"  # mallory's own two
        assert "No linked id followed" in review.text
        assert stored(server) == everyone

        done = page.delete(token_of(review.text), "mallory")
        assert done.status_code == 200, done.text
        assert cells(done.text, "local") == {
            "status": "deleted",
            "events": "2",
            "users": "—",
            "identities": "—",
        }
    assert stored(server) == VICTIM | VICTIM_ANONYMOUS  # every one of the victim's


def test_ticking_the_victim_deletes_their_events(server):
    victim_and_mallory(server)
    with PrivacyPage(server.url) as page:
        review = page.review("mallory", ["victim"])
        assert review.status_code == 200, review.text
        assert linked(review.text)["victim"]["checked"] is True
        assert cells(review.text, "local")["events"] == "5"
        assert "Linked ids followed: <code>victim</code>" in review.text
        assert stored(server) == VICTIM | VICTIM_ANONYMOUS | MALLORY

        done = page.delete(token_of(review.text), "mallory", ["victim"])
        assert done.status_code == 200, done.text
        assert cells(done.text, "local")["events"] == "5"
    # One step only: the victim's own anonymous id is their link, not mallory's.
    assert stored(server) == VICTIM_ANONYMOUS


def test_a_ticked_box_after_the_review_is_reviewed_not_deleted(server):
    """The token binds the ticked set: ticking victim after the counts were shown and
    pressing Delete shows the counts for the new set, with nothing deleted."""
    victim_and_mallory(server)
    with PrivacyPage(server.url) as page:
        review = page.review("mallory")
        changed = page.delete(token_of(review.text), "mallory", ["victim"])
        assert changed.status_code == 400
        assert "The ids sent differ from those reviewed" in changed.text
        assert linked(changed.text)["victim"]["checked"] is True
        assert cells(changed.text, "local")["events"] == "5"
        assert stored(server) == VICTIM | VICTIM_ANONYMOUS | MALLORY

        done = page.delete(token_of(changed.text), "mallory", ["victim"])
        assert done.status_code == 200, done.text
    assert stored(server) == VICTIM_ANONYMOUS


@pytest.mark.parametrize(
    ("alias", "mallory", "victim", "flagged"),
    [
        ("web", "web", "web", False),  # one source: listed, not flagged, not followed
        ("web", "web", "backend", True),  # the victim's events come from elsewhere
        ("web", "backend", "backend", True),  # the alias came from elsewhere
        ("backend", "backend", "backend", False),
    ],
)
def test_a_link_that_crosses_sources_is_flagged(server, alias, mallory, victim, flagged):
    victim_and_mallory(server, alias=alias, mallory=mallory, victim=victim)
    with PrivacyPage(server.url) as page:
        review = page.review("mallory")
        link = linked(review.text)["victim"]
        assert (link["sources"], link["link_sources"]) == (victim, alias)
        assert link["flag"] == ("crosses sources" if flagged else "")
        assert link["checked"] is False
        done = page.delete(token_of(review.text), "mallory")
        assert done.status_code == 200, done.text
    assert stored(server) == VICTIM | VICTIM_ANONYMOUS


def test_anonymous_ids_are_followed_only_when_ticked(server):
    send(
        server,
        "web",
        event("track", "a-before-1", anonymousId="a-1"),
        event("track", "a-before-2", anonymousId="a-1"),
        event("identify", "u-identify", userId="u-1", anonymousId="a-1"),
        event("track", "u-track", userId="u-1"),
        event("track", "shared", userId="u-other", anonymousId="a-1"),  # a shared device
    )
    with PrivacyPage(server.url) as page:
        review = page.review("u-1")
        assert linked(review.text) == {
            "a-1": {
                "kind": "anonymous_id",
                "how": "anonymous id on 1 of the user's events",
                "events": "2",
                "sources": "web",
                "link_sources": "web",
                "flag": "",
                "checked": False,
            }
        }
        done = page.delete(token_of(review.text), "u-1")
        assert done.status_code == 200, done.text
        assert stored(server) == {"a-before-1", "a-before-2", "shared"}

        send(server, "web", event("identify", "u-identify-2", userId="u-1", anonymousId="a-1"))
        done = page.reviewed_delete("u-1", ["a-1"])
        assert done.status_code == 200, done.text
        assert cells(done.text, "local")["events"] == "3"
    assert stored(server) == {"shared"}  # another user's event on the device stays


# -- the CLI ----------------------------------------------------------------------------------
def cli(config: str, *args: str) -> Any:
    return run_eventrouter("privacy", "delete", "--user-id", "mallory", *args, "--config", config)


def test_cli_lists_the_links_and_follows_only_when_told(server, tmp_path):
    victim_and_mallory(server, victim="backend")
    path = tmp_path / "eventrouter.toml"
    sink = {"type": "sqlite", "url": f"sqlite:///{tmp_path}/events.db"}
    path.write_text(to_toml({"sinks": {"local": sink}, "admin": {"token": ADMIN_TOKEN}}))
    config = str(path)

    dry = cli(config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "user 'mallory': own events from source(s): web",
        "1 linked id(s), 0 followed (name them with --follow ID, or --follow-all)",
        "  [ ] previous_id 'victim': aliased to the user (1 alias call(s)); 3 more event(s) "
        "from backend - CROSSES SOURCES (linked from web)",
        "local (sqlite): would delete 2 event(s)",
    ]
    followed = cli(config, "--dry-run", "--follow", "victim", "--follow", "nobody", "--json")
    report = json.loads(followed.stdout)
    assert report["user_ids"] == ["mallory", "victim"]
    assert report["not_linked"] == ["nobody"]
    (link,) = report["linked"]
    assert link["followed"] and link["cross_source"] and link["events"] == {"local": 3}
    assert report["stores"][0]["events"] == 5

    both = cli(config, "--follow", "victim", "--follow-all")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr

    result = cli(config)  # no flag: mallory's own events only
    assert result.returncode == 0, result.stderr
    assert "local (sqlite): deleted 2 event(s)" in result.stdout
    assert stored(server) == VICTIM | VICTIM_ANONYMOUS

    # The alias went with mallory's events: the link is gone, and so is the way to it.
    again = cli(config, "--follow-all")
    assert again.returncode == 0, again.stderr
    assert "no linked ids" in again.stdout
    assert stored(server) == VICTIM | VICTIM_ANONYMOUS


def test_cli_follow_all(server, tmp_path):
    victim_and_mallory(server)
    path = tmp_path / "eventrouter.toml"
    sink = {"type": "sqlite", "url": f"sqlite:///{tmp_path}/events.db"}
    path.write_text(to_toml({"sinks": {"local": sink}, "admin": {"token": ADMIN_TOKEN}}))
    result = cli(str(path), "--follow-all")
    assert result.returncode == 0, result.stderr
    assert "  [x] previous_id 'victim'" in result.stdout
    assert "local (sqlite): deleted 5 event(s)" in result.stdout
    assert stored(server) == VICTIM_ANONYMOUS


# -- PostgreSQL: the identities table ---------------------------------------------------------
@pytest.fixture
def postgres(tmp_path):
    with store_sink("postgres", tmp_path) as sink:
        raw = {"sinks": {"store": sink}, "sources": SOURCES}
        server = LiveServer(make_config(tmp_path, raw)).start()
        try:
            yield server, sink["url"].replace("postgresql+psycopg://", "postgresql://")
        finally:
            server.stop()


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()


def test_postgres_identities_are_listed_and_followed_only_when_ticked(postgres):
    server, url = postgres
    victim_and_mallory(server, victim="backend")
    send(server, "web", event("identify", "m-identify", userId="mallory", traits={"a": 1}))
    # A link only the identities table still knows (its events are gone: retention).
    with psycopg.connect(url) as connection:
        connection.execute(
            "INSERT INTO identities VALUES ('anonymous_id', 'a-old', 'mallory', now(), now())"
        )
    identities = "SELECT kind, identity, user_id FROM identities ORDER BY 1, 2, 3"
    assert rows(url, identities) == [
        ("anonymous_id", "a-old", "mallory"),
        ("anonymous_id", "a-victim", "victim"),
        ("previous_id", "victim", "mallory"),
    ]

    with PrivacyPage(server.url) as page:
        review = page.review("mallory")
        links = linked(review.text)
        assert links["victim"]["how"] == (
            "aliased to the user (1 alias call(s)); a previous_id link in the identities table"
        )
        assert links["victim"]["flag"] == "crosses sources"
        assert links["a-old"] == {
            "kind": "anonymous_id",
            "how": "an anonymous_id link in the identities table",
            "events": "0",
            "sources": "",
            "link_sources": "",
            "flag": "",
            "checked": False,
        }
        assert cells(review.text, "store") == {
            "status": "would delete",
            "events": "3",
            "users": "1",
            "identities": "2",
        }
        done = page.delete(token_of(review.text), "mallory")
        assert done.status_code == 200, done.text

    assert stored(server) == VICTIM | VICTIM_ANONYMOUS
    assert rows(url, "SELECT user_id FROM users ORDER BY 1") == [("victim",)]
    assert rows(url, identities) == [("anonymous_id", "a-victim", "victim")]

    # In-process, the same code: a request for the victim, following their anonymous id.
    deletion = erasure.delete_user(server.app.bus.sinks, "victim", follow=["a-victim"])
    assert [(s.status, s.events, s.users, s.identities) for s in deletion.stores] == [
        ("deleted", 4, 1, 1)
    ]
    assert stored(server) == set()
    assert rows(url, "SELECT user_id FROM users") == []
    assert rows(url, identities) == []
