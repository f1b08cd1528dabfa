"""Privacy controls, as an operator sees them (docs/privacy.md):

- IP anonymisation per source (``sources[].ip``, default ``[privacy] ip``): the stored
  ``context.ip``, from the connection or sent by the client, is kept, truncated or gone;
- PII scrubbing (``[privacy.scrub]``): dropped paths are absent and hashed ones hold the
  salted hash in the stored row, and the broker's message never holds the raw value;
- suppression: a suppressed id's new events are answered ``200`` and never stored, on
  an embedded server and through the queue (dropped at the edge, and in the worker for
  events queued before the suppression);
- ``eventrouter privacy`` from the shell (linked ids followed only with ``--follow``),
  and the dashboard's Privacy page over HTTP with its CSRF token and, for every change,
  the confirmation token of its review.

Real servers, a real RabbitMQ, real ``eventrouter`` subprocesses; nothing mocked.
Deletion on PostgreSQL and ClickHouse is in test_privacy_stores.py, linked ids in
test_privacy_links.py, the confirmation tokens in test_privacy_confirm.py (this folder).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
from typing import Any

import pytest
from kombu import Connection

from eventrouter.admin.confirm import Confirmations
from eventrouter.config import ConfigError
from eventrouter.events import ipanon
from eventrouter.privacy.suppressions import SuppressionList
from eventrouter.sinks.sqlite_store import SQLiteStore
from tests.admin_support import sign_in
from tests.helpers import ADMIN_TOKEN, LiveServer, eventually, make_config, run_eventrouter
from tests.privacy_support import PrivacyPage, cells, linked, token_of
from tests.queue_support import (  # noqa: F401 - fixtures
    QueueEnv,
    WorkerThread,
    amqp_env,
    to_toml,
    unique,
)

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

SALT = "test-salt"


def basic(write_key: str) -> tuple[str, str]:
    return (write_key, "")


def salted(value: str) -> str:
    return hmac.new(SALT.encode(), value.encode(), hashlib.sha256).hexdigest()


def track(user_id: str | None = None, anonymous_id: str | None = None, **extra: Any) -> dict:
    body: dict[str, Any] = {"type": "track", "event": "Privacy Test", "messageId": unique("m")}
    if user_id:
        body["userId"] = user_id
    if anonymous_id:
        body["anonymousId"] = anonymous_id
    return {**body, **extra}


def stored_ids(server: LiveServer) -> set[str]:
    return {event["message_id"] for event in server.events()}


def sqlite_sink(tmp_path, name: str = "local") -> dict[str, Any]:
    return {"type": "sqlite", "url": f"sqlite:///{tmp_path}/{name}.db"}


# -- IP anonymisation -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "truncated"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:abcd:12::1", "2001:db8:abcd::"),
        ("2001:db8:abcd:ffff:1:2:3:4", "2001:db8:abcd::"),
        ("::ffff:198.51.100.23", "198.51.100.0"),
        ("not an address", None),
    ],
)
def test_truncate(value, truncated):
    assert ipanon.truncate(value) == truncated


def test_ip_is_kept_truncated_or_dropped_per_source(start_server):
    server = start_server(
        {
            "privacy": {"ip": "truncate"},
            "sources": [
                {"name": "web", "write_key": "wk-web"},  # the [privacy] default
                {"name": "backend", "write_key": "wk-backend", "ip": "drop"},
                {"name": "internal", "write_key": "wk-internal", "ip": "keep"},
            ],
        }
    )
    client_ip = {"context": {"ip": "2001:db8:abcd:12::1"}}
    for source in ("web", "backend", "internal"):
        for body in (track("u-ip"), track("u-ip", **client_ip)):
            response = server.post("/v1/track", body, auth=basic(f"wk-{source}"))
            assert response.status_code == 200, response.text

    def ips(source: str) -> list:
        return sorted(str(e["context"].get("ip")) for e in server.events(source=source))

    # The connection is 127.0.0.1; the client's own context.ip is treated the same way.
    assert ips("web") == ["127.0.0.0", "2001:db8:abcd::"]
    assert ips("backend") == ["None", "None"]
    assert ips("internal") == ["127.0.0.1", "2001:db8:abcd:12::1"]


def test_open_ingestion_uses_the_privacy_default(start_server):
    server = start_server({"privacy": {"ip": "drop"}})
    batch = {
        "batch": [track("u1"), track("u2", context={"ip": "198.51.100.23"})],
        "context": {"ip": "198.51.100.24"},  # batch-level context, merged into items
    }
    assert server.post("/v1/batch", batch).status_code == 200
    assert server.post("/track", {"event_type": "legacy", "user_id": "u3"}).status_code == 200
    events = server.events()
    assert len(events) == 3
    assert all("ip" not in event["context"] for event in events)


# -- PII scrubbing ------------------------------------------------------------------------
SCRUB = {
    "drop": ["properties.password", "traits.phone", "properties.products.*.coupon"],
    "hash": ["properties.email", "traits.email", "context.traits.email"],
    "salt": SALT,
}


def test_scrubbed_paths_are_dropped_or_hashed_in_the_stored_row(start_server):
    server = start_server({"privacy": {"scrub": SCRUB}})
    shared = {"traits": {"email": "shared@example.com", "plan": "pro"}}
    batch = {
        "context": shared,  # one dict shared by every item of the batch
        "batch": [
            track(
                "u1",
                messageId="t1",
                properties={
                    "email": "alice@example.com",
                    "password": "hunter2",
                    "total": 30,
                    "products": [{"sku": "a", "coupon": "X1"}, {"sku": "b"}],
                },
            ),
            {
                "type": "identify",
                "userId": "u1",
                "messageId": "i1",
                "traits": {"email": "alice@example.com", "phone": "+44 20 7946 0000", "age": 30},
            },
            track("u2", messageId="t2", properties={"email": None, "plan": "free"}),
        ],
    }
    assert server.post("/v1/batch", batch).status_code == 200
    rows = {event["message_id"]: event for event in server.events()}

    assert rows["t1"]["properties"] == {
        "email": salted("alice@example.com"),
        "total": 30,
        "products": [{"sku": "a"}, {"sku": "b"}],
    }
    assert rows["i1"]["traits"] == {"email": salted("alice@example.com"), "age": 30}
    assert rows["t2"]["properties"] == {"email": None, "plan": "free"}  # null stays null
    for row in rows.values():
        assert row["context"]["traits"] == {"email": salted("shared@example.com"), "plan": "pro"}
    assert "alice@example.com" not in json.dumps(rows)
    stats = server.health().json()["components"]["scrub"]["stats"]
    assert stats["events"] == 3


def test_scrub_finds_keys_spelt_with_escapes_and_leaves_other_texts_as_sent(start_server, tmp_path):
    """The stage reads a column only when a configured key may be in its raw text: a
    key spelt with JSON escapes is still found, and an event without any configured
    key is stored byte for byte as the client sent it."""
    server = start_server({"privacy": {"scrub": SCRUB}})
    escaped = b'{"p\\u0061ssword":"hunter2","em\\u0061il":"eve@example.com","n":1}'
    untouched = b'{ "plan" : "pro",  "total":30 }'
    for message_id, properties in (("esc", escaped), ("plain", untouched)):
        body = b'{"userId":"u9","event":"e","messageId":"%s","properties":%s}' % (
            message_id.encode(),
            properties,
        )
        response = server.post(
            "/v1/track", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200, response.text
    rows = {event["message_id"]: event for event in server.events()}
    assert rows["esc"]["properties"] == {"email": salted("eve@example.com"), "n": 1}
    assert rows["plain"]["properties"] == {"plan": "pro", "total": 30}
    with sqlite3.connect(tmp_path / "events.db") as db:
        [(text,)] = db.execute("SELECT properties FROM events WHERE message_id = 'plain'")
    assert text.encode() == untouched


def test_hash_paths_without_a_salt_are_a_config_error(tmp_path):
    raw = {"privacy": {"scrub": {"hash": ["properties.email"]}}}
    with pytest.raises(ConfigError, match=r"privacy\.scrub\.salt: required with privacy\.scrub"):
        make_config(tmp_path, raw)
    config = make_config(tmp_path, raw, EVENTROUTER_SCRUB_SALT="from-env")
    assert config.privacy.scrub.salt == "from-env"
    with pytest.raises(ConfigError, match=r"privacy\.scrub\.drop\[0\]: 'email' is not a path"):
        make_config(tmp_path, {"privacy": {"scrub": {"drop": ["email"]}}})


def test_the_broker_never_holds_the_raw_value(amqp_env):
    server = LiveServer(amqp_env.config(privacy={"scrub": SCRUB})).start()
    try:
        body = track(
            "u1",
            messageId="q1",
            properties={"email": "bob@example.com", "password": "hunter2-secret"},
        )
        assert server.post("/v1/track", body).status_code == 200
        with Connection(amqp_env.url, connect_timeout=5) as connection:
            message = connection.default_channel.basic_get(amqp_env.queue_name(), no_ack=False)
            assert message is not None
            payload = bytes(message.body)
            message.channel.basic_reject(message.delivery_tag, requeue=True)
        assert b"bob@example.com" not in payload
        assert b"hunter2-secret" not in payload
        assert salted("bob@example.com").encode() in payload

        with WorkerThread(amqp_env.config(privacy={"scrub": SCRUB})) as worker:
            eventually(lambda: worker.worker.consumers[0].written == 1, "the event stored")
        (event,) = server.events()
        assert event["properties"] == {"email": salted("bob@example.com")}  # hashed once
    finally:
        server.stop()


# -- suppression ----------------------------------------------------------------------------
def suppressor(bus) -> Any:
    return bus.pm.get_plugin("suppress:store")


def test_suppressed_ids_are_accepted_but_never_stored(start_server, tmp_path):
    server = start_server({"privacy": {"refresh": "100ms"}})
    store = SuppressionList(SQLiteStore(f"sqlite:///{tmp_path}/events.db"))
    try:
        assert server.post("/v1/track", track("u-warm")).status_code == 200  # creates the db
        store.add("user_id", "u-gone", "test")
        store.add("anonymous_id", "a-gone")
        plugin = suppressor(server.app.bus)
        eventually(lambda: "u-gone" in plugin.user_ids, "the server read the list")

        # The counter is the process's: other tests in this process may have counted.
        dropped_before = edge_dropped(server)
        kept = track("u-kept", anonymous_id="a-kept")
        gone = [track("u-gone"), track(anonymous_id="a-gone"), track("u-x", anonymous_id="a-gone")]
        for body in gone:
            response = server.post("/v1/track", body)
            assert response.status_code == 200, response.text
            assert response.json() == {"success": True}
        assert server.post("/v1/batch", {"batch": [kept, track("u-gone")]}).status_code == 200
        assert stored_ids(server) == {kept["messageId"], *_ids_of(server, "u-warm")}

        health = server.health().json()["components"]["suppression"]
        assert health["stats"]["dropped"] == 4
        assert health["stats"]["user_ids"] == 1
        assert edge_dropped(server) == dropped_before + 4

        store.remove("user_id", "u-gone")
        eventually(lambda: "u-gone" not in plugin.user_ids, "the server read the change")
        again = track("u-gone")
        assert server.post("/v1/track", again).status_code == 200
        assert again["messageId"] in stored_ids(server)
    finally:
        store.close()


def edge_dropped(server: LiveServer) -> float:
    """``eventrouter_suppressed_dropped_total{sink="edge"}`` as /metrics shows it (0 before
    the first drop)."""
    metrics = server.client.get("/metrics").text
    found = re.search(r'^eventrouter_suppressed_dropped_total\{sink="edge"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _ids_of(server: LiveServer, user_id: str) -> set[str]:
    return {e["message_id"] for e in server.events(user_id=user_id)}


def test_suppression_through_the_queue_edge_and_worker(amqp_env):
    privacy = {"refresh": "100ms"}
    server = LiveServer(amqp_env.config(privacy=privacy)).start()
    store = SuppressionList(SQLiteStore(f"sqlite:///{amqp_env.db_path}"))
    try:

        def published() -> int:
            components = server.health().json()["components"]
            return components["broker"]["stats"]["published_events"]

        queued = track("u-gone")  # in the broker before the suppression
        assert server.post("/v1/track", queued).status_code == 200
        store.add("user_id", "u-gone")
        eventually(lambda: "u-gone" in suppressor(server.app.bus).user_ids, "edge refreshed")

        later = track("u-gone")  # dropped at the edge: never published
        assert server.post("/v1/track", later).status_code == 200
        assert published() == 1
        other = track("u-other")
        assert server.post("/v1/track", other).status_code == 200
        assert published() == 2

        with WorkerThread(amqp_env.config(privacy=privacy)) as worker:
            consumer = worker.worker.consumers[0]
            eventually(lambda: consumer.written + consumer.dropped == 2, "both queued handled")
            assert (consumer.written, consumer.dropped) == (1, 1)
            assert suppressor(worker.worker.bus).dropped == 1
        assert amqp_env.stored_ids() == [other["messageId"]]
    finally:
        store.close()
        server.stop()


# -- the CLI ----------------------------------------------------------------------------------
def write_config(tmp_path, sinks: dict[str, Any]) -> str:
    path = tmp_path / "eventrouter.toml"
    path.write_text(to_toml({"sinks": sinks, "admin": {"token": ADMIN_TOKEN}}))
    return str(path)


def test_cli_delete_suppress_list_unsuppress(start_server, tmp_path):
    sinks = {
        "local": sqlite_sink(tmp_path),
        "archive": {"type": "s3", "bucket": "never-written", "acknowledgements": False},
    }
    config = write_config(tmp_path, sinks)
    server = start_server({"sinks": {"local": sinks["local"]}})
    batch = [
        {"type": "identify", "userId": "u-del", "anonymousId": "a-del", "messageId": "i1"},
        track("u-del", messageId="t1"),
        track(anonymous_id="a-del", messageId="t2"),  # before signing in
        track("u-keep", messageId="t3"),
    ]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200

    # By default only the user id's own events; the linked anonymous id is listed.
    dry = run_eventrouter(
        "privacy", "delete", "--user-id", "u-del", "--dry-run", "--config", config
    )
    assert dry.returncode == 0, dry.stderr
    assert "1 linked id(s), 0 followed" in dry.stdout
    assert (
        "  [ ] anonymous_id 'a-del': anonymous id on 1 of the user's events; "
        "1 more event(s) from default\n"
    ) in dry.stdout
    assert "local (sqlite): would delete 2 event(s)" in dry.stdout
    assert "archive (s3): skipped: S3 objects are immutable batches" in dry.stdout
    dry = run_eventrouter(
        "privacy", "delete", "--user-id", "u-del", "--follow", "a-del", "--dry-run",
        "--config", config,
    )  # fmt: skip
    assert "  [x] anonymous_id 'a-del'" in dry.stdout
    assert "local (sqlite): would delete 3 event(s)" in dry.stdout
    assert stored_ids(server) == {"i1", "t1", "t2", "t3"}

    result = run_eventrouter(
        "privacy", "delete", "--user-id", "u-del", "--follow", "a-del", "--suppress", "--json",
        "--config", config,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert [(s["sink"], s["status"], s["events"]) for s in report["stores"]] == [
        ("local", "deleted", 3),
        ("archive", "skipped", 0),
    ]
    assert report["anonymous_ids"] == ["a-del"]
    assert stored_ids(server) == {"t3"}

    added = run_eventrouter(
        "privacy", "suppress", "--anonymous-id", "a-9", "--reason", "ticket 9", "--config", config
    )
    assert added.returncode == 0, added.stderr
    assert "anonymous_id 'a-9': suppressed" in added.stdout
    listing = run_eventrouter("privacy", "list", "--config", config)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split(None, 4)[2:] for line in listing.stdout.splitlines()[:-1]]
    assert sorted(rows) == [["anonymous_id", "a-9", "ticket 9"], ["user_id", "u-del", "deleted"]]
    assert listing.stdout.splitlines()[-1] == "2 suppressed id(s)"

    removed = run_eventrouter("privacy", "unsuppress", "--user-id", "u-del", "--config", config)
    assert (removed.returncode, removed.stdout.strip()) == (0, "user_id 'u-del': unsuppressed"), (
        removed.stderr
    )
    again = run_eventrouter("privacy", "unsuppress", "--user-id", "u-del", "--config", config)
    assert (again.returncode, again.stdout.strip()) == (1, "user_id 'u-del': was not suppressed")


def test_cli_errors(tmp_path):
    only_s3 = write_config(tmp_path, {"archive": {"type": "s3", "bucket": "b-1"}})
    result = run_eventrouter("privacy", "suppress", "--user-id", "u1", "--config", only_s3)
    assert result.returncode == 2
    assert "no SQL sink is configured" in result.stderr
    config = write_config(tmp_path, {"local": sqlite_sink(tmp_path)})
    result = run_eventrouter(
        "privacy", "delete", "--user-id", "u1", "--sink", "nope", "--config", config
    )
    assert result.returncode == 2
    assert "no sink named 'nope'" in result.stderr
    result = run_eventrouter("privacy", "suppress", "--user-id", " ", "--config", config)
    assert result.returncode == 2
    assert "user_id: must not be empty" in result.stderr


# -- the dashboard -------------------------------------------------------------------------------
def test_privacy_page_end_to_end(start_server):
    """Review, confirm with the review's token; the token's own cases (other session,
    other ids, expired, replayed, across processes) are in test_privacy_confirm.py,
    the linked ids in test_privacy_links.py."""
    server = start_server({"privacy": {"refresh": "100ms"}})
    batch = [
        {"type": "identify", "userId": "u-page", "anonymousId": "a-page", "messageId": "i1"},
        track("u-page", messageId="t1"),
        track(anonymous_id="a-page", messageId="t2"),
        track("u-stay", messageId="t3"),
    ]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    cookie = sign_in(server.url)
    with PrivacyPage(server.url, cookie=cookie) as page:
        browser = page.client
        user_page = browser.get("/admin/users/u-page")
        assert 'href="/admin/privacy?user_id=u-page"' in user_page.text
        form = browser.get("/admin/privacy", params={"user_id": "u-page"})
        assert form.status_code == 200
        assert '<a href="/admin/privacy" aria-current="page">Privacy</a>' in form.text
        assert 'name="user_id" value="u-page"' in form.text

        forged = browser.post("/admin/privacy", data={"action": "review", "user_id": "u-page"})
        assert forged.status_code == 403
        assert "CSRF" in forged.text
        forged = browser.post(
            "/admin/privacy", data={"action": "delete", "user_id": "u-page", "confirm": "u-page"}
        )
        assert forged.status_code == 403
        assert stored_ids(server) == {"i1", "t1", "t2", "t3"}

        # The CSRF token alone is not enough: a delete needs the review's token.
        unreviewed = page.delete(None, "u-page", ["a-page"], suppress=True)
        assert unreviewed.status_code == 400
        assert "confirm_token: required: review the change first" in unreviewed.text
        assert stored_ids(server) == {"i1", "t1", "t2", "t3"}

        review = page.review("u-page", suppress=True)
        assert review.status_code == 200, review.text
        assert cells(review.text, "local") == {
            "status": "would delete",
            "events": "2",  # the user id's own: the linked anonymous id is not followed
            "users": "—",
            "identities": "—",
        }
        assert linked(review.text)["a-page"]["checked"] is False
        review = page.review("u-page", ["a-page"], suppress=True)
        assert cells(review.text, "local")["events"] == "3"
        assert "Linked ids followed: <code>a-page</code>" in review.text
        assert stored_ids(server) == {"i1", "t1", "t2", "t3"}

        token = token_of(review.text)
        wrong = page.delete(token, "u-page", ["a-page"], suppress=True, confirm="u-pag")
        assert wrong.status_code == 400
        assert "Type the user id exactly" in wrong.text
        assert stored_ids(server) == {"i1", "t1", "t2", "t3"}

        # The typo spent nothing: the review's token still confirms.
        done = page.delete(token, "u-page", ["a-page"], suppress=True)
        assert done.status_code == 200, done.text
        assert cells(done.text, "local")["events"] == "3"
        assert cells(done.text, "local")["status"] == "deleted"
        assert stored_ids(server) == {"t3"}

        # Suppressed as well: the list shows it, and its new events are dropped at once.
        listing = browser.get("/admin/privacy").text
        assert 'data-suppressed="user_id:u-page"' in listing
        assert 'name="action" value="review_unsuppress"' in listing
        assert server.post("/v1/track", track("u-page", messageId="t4")).status_code == 200
        assert stored_ids(server) == {"t3"}

        unreviewed = page.change("suppress", "anonymous_id", "a-x", None)
        assert unreviewed.status_code == 400
        assert 'data-suppressed="anonymous_id:a-x"' not in browser.get("/admin/privacy").text
        review = page.review_change("suppress", "anonymous_id", "a-x", "ticket 7")
        assert review.status_code == 200
        assert "Not suppressed now." in review.text
        assert 'data-suppressed="anonymous_id:a-x"' not in browser.get("/admin/privacy").text
        added = page.change("suppress", "anonymous_id", "a-x", token_of(review.text), "ticket 7")
        assert added.status_code == 200
        assert "anonymous_id &#39;a-x&#39; suppressed." in added.text
        assert 'data-suppressed="anonymous_id:a-x"' in added.text
        bad = page.review_change("suppress", "email", "x")
        assert bad.status_code == 400

        review = page.review_change("unsuppress", "user_id", "u-page")
        assert "Suppressed since" in review.text
        lifted = page.change("unsuppress", "user_id", "u-page", token_of(review.text))
        assert lifted.status_code == 200
        assert 'data-suppressed="user_id:u-page"' not in lifted.text
        assert server.post("/v1/track", track("u-page", messageId="t5")).status_code == 200
        assert stored_ids(server) == {"t3", "t5"}

    # A script uses the bearer token: no CSRF token, but the same review and token.
    with PrivacyPage(server.url, bearer=True) as script:
        unreviewed = script.change("suppress", "user_id", "u-script", None)
        assert unreviewed.status_code == 400
        scripted = script.reviewed_change("suppress", "user_id", "u-script")
        assert scripted.status_code == 200
        assert 'data-suppressed="user_id:u-script"' in scripted.text
    assert server.client.get("/admin/privacy").status_code == 303  # not signed in

    # The page opened its own connections to the store; the app's shutdown closes them.
    owners = [close.__self__ for close in server.app.dashboard.closers]
    suppressions = next(o for o in owners if isinstance(o, SuppressionList))
    (confirmations,) = [o for o in owners if isinstance(o, Confirmations)]
    assert suppressions.tables._engine is not None
    assert confirmations.used.tables._engine is not None
    server.stop()
    assert suppressions.tables._engine is None
    assert confirmations.used.tables._engine is None
