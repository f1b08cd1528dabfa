"""Destructive actions need proof: the confirmation tokens of the Privacy page
(``admin/confirm.py``, docs/privacy.md#confirmation-tokens).

A delete, a suppress and an unsuppress each need the token that the review of that
exact change issued: bound to the session and to the ids, valid for 10 minutes, once.
Every refusal is checked where it matters: the store's events and the suppression list
are unchanged afterwards. The used-token record is tested on every SQL store, and a
token issued by one ``eventrouter serve`` process is accepted once by another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from clickhouse_driver import Client

from eventrouter.admin.confirm import LIFETIME, Confirmations, UsedTokens
from eventrouter.privacy.suppressions import SuppressionList
from eventrouter.sinks.clickhouse_store import CONFIRMATIONS_USED_DDL
from eventrouter.sinks.sqlite_store import SQLiteStore
from tests.admin_support import sign_in
from tests.helpers import ADMIN_BEARER, LiveServer, ServeProcess
from tests.privacy_support import PrivacyPage, cells, token_of
from tests.queue_support import unique
from tests.store_support import CLICKHOUSE_ADMIN, STORES, store_of, store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

USER = [
    {"type": "identify", "userId": "u-1", "messageId": "u1-identify"},
    {"type": "track", "event": "Viewed", "userId": "u-1", "messageId": "u1-track"},
]
OTHER = [{"type": "track", "event": "Viewed", "userId": "u-2", "messageId": "u2-track"}]
EVERYONE = {"u1-identify", "u1-track", "u2-track"}


def stored(events: list[dict]) -> set[str]:
    return {e["message_id"] for e in events}


@pytest.fixture
def server(start_server) -> LiveServer:
    server = start_server({"privacy": {"refresh": "100ms"}})
    response = server.post("/v1/batch", {"batch": USER + OTHER})
    assert response.status_code == 200, response.text
    return server


@pytest.fixture
def suppressions(server, tmp_path) -> Iterator[SuppressionList]:
    with SuppressionList(SQLiteStore(f"sqlite:///{tmp_path}/events.db")) as listing:
        yield listing


def suppressed(listing: SuppressionList) -> set[tuple[str, str]]:
    return {(s.kind, s.id) for s in listing.list()}


# -- deleting ---------------------------------------------------------------------------------
def test_a_delete_without_the_reviews_token_changes_nothing(server):
    with PrivacyPage(server.url) as page:
        missing = page.delete(None, "u-1")
        assert missing.status_code == 400
        assert "confirm_token: required: review the change first, then confirm it" in missing.text

        review = page.review("u-1")
        token = token_of(review.text)
        forged = page.delete(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "u-1")
        assert forged.status_code == 403
        assert "not a token this dashboard issued" in forged.text

        # Issued for u-2: a delete of u-1 with it is shown as a review, and deletes nothing.
        other = page.review("u-2")
        for_other = page.delete(token_of(other.text), "u-1")
        assert for_other.status_code == 400
        assert "The ids sent differ from those reviewed" in for_other.text
        assert cells(for_other.text, "local")["events"] == "2"

        # A suppress review's token is for another action.
        suppress = page.review_change("suppress", "user_id", "u-1")
        for_suppress = page.delete(token_of(suppress.text), "u-1")
        assert for_suppress.status_code == 400
        assert stored(server.events()) == EVERYONE

        # The review's own token still confirms: the refusals spent nothing.
        done = page.delete(token, "u-1")
        assert done.status_code == 200, done.text
    assert stored(server.events()) == {"u2-track"}


def test_a_token_is_bound_to_the_session_that_reviewed(server, suppressions):
    with PrivacyPage(server.url) as alice, PrivacyPage(server.url) as bob:
        assert alice.csrf != bob.csrf
        review = alice.review("u-1")
        stolen = bob.delete(token_of(review.text), "u-1")
        assert stolen.status_code == 403
        assert "issued to another session" in stolen.text
        assert stored(server.events()) == EVERYONE

        change = alice.review_change("suppress", "user_id", "u-9")
        stolen = bob.change("suppress", "user_id", "u-9", token_of(change.text))
        assert stolen.status_code == 403
        assert "issued to another session" in stolen.text
        assert suppressed(suppressions) == set()

        # A script's token (the bearer token has no session) is not a session's either.
        with PrivacyPage(server.url, bearer=True) as script:
            scripted = token_of(script.review_change("suppress", "user_id", "u-9").text)
            assert bob.change("suppress", "user_id", "u-9", scripted).status_code == 403
            alices = token_of(change.text)
            assert script.change("suppress", "user_id", "u-9", alices).status_code == 403
        assert suppressed(suppressions) == set()

        assert alice.delete(token_of(review.text), "u-1").status_code == 200
        assert alice.change("suppress", "user_id", "u-9", token_of(change.text)).status_code == 200
    assert stored(server.events()) == {"u2-track"}
    assert suppressed(suppressions) == {("user_id", "u-9")}


def test_a_token_works_once(server, suppressions):
    with PrivacyPage(server.url) as page:
        review = page.review("u-1", suppress=True)
        token = token_of(review.text)
        assert page.delete(token, "u-1", suppress=True).status_code == 200
        assert stored(server.events()) == {"u2-track"}

        # The user comes back (unsuppressed, new events); the old confirmation is spent.
        suppressions.remove("user_id", "u-1")
        server.app.bus.pm.get_plugin("suppress:store").refresh()
        assert server.post("/v1/batch", {"batch": USER}).status_code == 200
        replayed = page.delete(token, "u-1", suppress=True)
        assert replayed.status_code == 403
        assert "This confirmation was used already" in replayed.text
        assert stored(server.events()) == EVERYONE
        assert suppressed(suppressions) == set()

        review = page.review_change("suppress", "anonymous_id", "a-1")
        token = token_of(review.text)
        assert page.change("suppress", "anonymous_id", "a-1", token).status_code == 200
        suppressions.remove("anonymous_id", "a-1")
        assert page.change("suppress", "anonymous_id", "a-1", token).status_code == 403
        assert suppressed(suppressions) == set()

        suppressions.add("user_id", "u-5")
        review = page.review_change("unsuppress", "user_id", "u-5")
        token = token_of(review.text)
        assert page.change("unsuppress", "user_id", "u-5", token).status_code == 200
        suppressions.add("user_id", "u-5")
        replayed = page.change("unsuppress", "user_id", "u-5", token)
        assert replayed.status_code == 403
        assert "used already" in replayed.text
        assert suppressed(suppressions) == {("user_id", "u-5")}


def test_an_expired_token_is_refused(server, suppressions, tmp_path):
    """Tokens minted with the server's key: one dated 10 minutes and a second ago is
    refused; a fresh one (the control) is accepted. A script's tokens (bearer) are
    bound to ``bearer``, so the test can mint them."""
    used = UsedTokens(SQLiteStore(f"sqlite:///{tmp_path}/events.db"))
    token_key = server.config.admin.token
    late = Confirmations(token_key, used, clock=lambda: time.time() - LIFETIME - 1)
    fresh = Confirmations(token_key, used)
    try:
        with PrivacyPage(server.url, bearer=True) as script:
            token = late.issue(None, "suppress", "user_id", "u-7")
            expired = script.change("suppress", "user_id", "u-7", token)
            assert expired.status_code == 403
            assert "This confirmation expired (10 minutes)" in expired.text
            expired = script.delete(late.issue(None, "delete", "u-1", [], False), "u-1")
            assert expired.status_code == 403
            assert "expired" in expired.text
            assert suppressed(suppressions) == set()
            assert stored(server.events()) == EVERYONE

            token = fresh.issue(None, "suppress", "user_id", "u-7")
            assert script.change("suppress", "user_id", "u-7", token).status_code == 200
            token = fresh.issue(None, "delete", "u-1", [], False)
            assert script.delete(token, "u-1").status_code == 200
        assert suppressed(suppressions) == {("user_id", "u-7")}
        assert stored(server.events()) == {"u2-track"}
    finally:
        used.close()


def test_suppress_tokens_bind_the_action_kind_and_id(server, suppressions):
    with PrivacyPage(server.url) as page:
        token = token_of(page.review_change("suppress", "user_id", "u-3").text)
        for action, kind, ident in [
            ("suppress", "user_id", "u-4"),
            ("suppress", "anonymous_id", "u-3"),
            ("unsuppress", "user_id", "u-3"),
        ]:
            refused = page.change(action, kind, ident, token)
            assert refused.status_code == 403, (action, kind, ident)
            assert "issued for another change" in refused.text
        assert page.change("suppress", "user_id", "u-3", None).status_code == 400
        assert suppressed(suppressions) == set()
        assert page.change("suppress", "user_id", "u-3", token).status_code == 200
    assert suppressed(suppressions) == {("user_id", "u-3")}


def test_the_csrf_token_is_still_required(server):
    with PrivacyPage(server.url) as page:
        token = token_of(page.review("u-1").text)
        refused = page.delete(token, "u-1", csrf=False)
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        assert stored(server.events()) == EVERYONE
        assert page.delete(token, "u-1").status_code == 200
    assert stored(server.events()) == {"u2-track"}


# -- across processes -------------------------------------------------------------------------
def test_a_token_from_one_process_is_accepted_once_by_another(tmp_path):
    """Two ``eventrouter serve`` processes on one data directory (as gunicorn workers, or
    two machines, share the admin store): reviewed on the first, confirmed on the
    second, refused on both afterwards."""
    config = tmp_path / "eventrouter.toml"
    config.write_text('[privacy]\nrefresh = "100ms"\n')
    first = ServeProcess(tmp_path, "--config", str(config)).wait_ready()
    second = ServeProcess(tmp_path, "--config", str(config)).wait_ready()
    try:

        def events() -> set[str]:
            response = httpx.get(f"{first.url}/api/v1/events", headers=ADMIN_BEARER, timeout=30)
            assert response.status_code == 200, response.text
            return stored(response.json()["events"])

        response = httpx.post(f"{first.url}/v1/batch", json={"batch": USER + OTHER}, timeout=30)
        assert response.status_code == 200, response.text
        cookie = sign_in(first.url)
        with (
            PrivacyPage(first.url, cookie=cookie) as on_first,
            PrivacyPage(second.url, cookie=cookie) as on_second,
        ):
            review = on_first.review("u-1")
            token = token_of(review.text)
            done = on_second.delete(token, "u-1")
            assert done.status_code == 200, done.text
            assert cells(done.text, "local")["events"] == "2"
            assert events() == {"u2-track"}

            response = httpx.post(f"{second.url}/v1/batch", json={"batch": USER}, timeout=30)
            assert response.status_code == 200, response.text
            for page in (on_first, on_second):
                replayed = page.delete(token, "u-1")
                assert replayed.status_code == 403
                assert "used already" in replayed.text
            assert events() == EVERYONE
    finally:
        assert first.stop() == 0, first.log()
        assert second.stop() == 0, second.log()


# -- the used-token record, in every store ------------------------------------------------------
@pytest.fixture(params=STORES)
def used_tokens(request, tmp_path) -> Iterator[UsedTokens]:
    with store_sink(request.param, tmp_path) as sink:
        if request.param == "clickhouse":  # else the sink's start-up creates the database
            database = sink["url"].rsplit("/", 1)[1]
            client = Client.from_url(CLICKHOUSE_ADMIN)
            client.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
            client.disconnect()
        used = UsedTokens(store_of(sink))
        try:
            yield used
        finally:
            used.close()


def test_a_nonce_is_used_once_in_every_store(used_tokens):
    expires = datetime.now(UTC) + timedelta(seconds=LIFETIME)
    nonce = unique("n-")
    assert used_tokens.use(nonce, expires) is True
    assert used_tokens.use(nonce, expires) is False
    assert used_tokens.use(unique("n-"), expires) is True

    # Racing uses of one nonce (two workers, one double-click): exactly one wins.
    nonce = unique("n-")
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def use() -> None:
        barrier.wait()
        results.append(used_tokens.use(nonce, expires))

    threads = [threading.Thread(target=use) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False] * 5 + [True]


def test_expired_nonces_are_purged(tmp_path):
    url = f"sqlite:///{tmp_path}/admin.db"
    with SuppressionList(SQLiteStore(url)) as listing:  # the same store, the same settings
        used = UsedTokens(SQLiteStore(url))
        try:
            assert used.use("old", datetime.now(UTC) - timedelta(seconds=1)) is True
            assert used.use("new", datetime.now(UTC) + timedelta(seconds=LIFETIME)) is True
            with used.tables.engine.connect() as connection:
                rows = connection.exec_driver_sql("SELECT nonce FROM confirmations_used").all()
            assert rows == [("new",)]
        finally:
            used.close()
        assert listing.list() == []


def test_the_clickhouse_statements_run_on_a_current_clickhouse():
    """The used-token table and its statements, run on 18.16 above, on the current
    ClickHouse that chdb embeds too."""
    from chdb import session

    db = session.Session()
    try:
        db.query("CREATE DATABASE IF NOT EXISTS eventrouter")
        db.query("USE eventrouter")
        db.query(CONFIRMATIONS_USED_DDL)
        db.query(
            "INSERT INTO confirmations_used (nonce, claim, expires_at) "
            "VALUES ('n1', 'b', now() + 600), ('n1', 'a', now() + 600)"
        )
        winner = db.query(
            "SELECT claim FROM confirmations_used WHERE nonce = 'n1' "
            "ORDER BY used_at, claim LIMIT 1",
            "CSV",
        )
        assert winner.bytes().decode().strip() == '"a"'
        partitions = db.query(
            "SELECT DISTINCT partition FROM system.parts WHERE database = currentDatabase() "
            "AND table = 'confirmations_used' AND active",
            "CSV",
        )
        (partition,) = partitions.bytes().decode().split()
        db.query(f"ALTER TABLE confirmations_used DROP PARTITION {int(partition.strip(chr(34)))}")
        assert db.query("SELECT count() FROM confirmations_used", "CSV").bytes().strip() == b"0"
    finally:
        db.close()
