"""The loader snippet and the analytics library end to end, in a real headless Chromium
(Debian's, never a downloaded one).

A website on ``localhost`` embeds the snippet exactly as the admin Sources page shows it
(``snippet.loader_snippet``); eventrouter runs on ``127.0.0.1`` and serves both the
library and the API, so every request the library makes is cross-site, as on a real
website. Tests assert what a user sees: the events in the store, read through the query
API, and the cookies and localStorage the library leaves. Waits are bounded by
``HANG_GUARD``; nothing is timed, except where Retry-After is the behaviour under test
(a lower bound, which a slow machine cannot break).

Each test saves a screenshot to ``tests/artifacts/screenshots/snippet-<test>.png`` and
fails on an uncaught JavaScript error.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import pytest
from playwright.sync_api import Browser, Page

import eventrouter
from eventrouter.snippet import loader_snippet
from tests.browser_support import SCREENSHOTS, chromium
from tests.helpers import HANG_GUARD, LiveServer, eventually, make_config
from tests.snippet_support import (
    Answer,
    Received,
    ScriptedApi,
    Website,
    page_html,
    with_load_options,
    with_queued_calls,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

WRITE_KEY = "wk-web"
QUEUE_KEY = "ajs_eventrouter_queue"
UTM = "?utm_source=news&utm_campaign=spring"


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def server(tmp_path) -> Iterator[LiveServer]:
    config = make_config(tmp_path, {"sources": [{"name": "web", "write_key": WRITE_KEY}]})
    server = LiveServer(config).start()
    yield server
    server.stop()


@pytest.fixture
def website() -> Iterator[Website]:
    site = Website().start()
    yield site
    site.stop()


class Browsing:
    """One browser context (its own cookies and localStorage) for one test: opens pages,
    records uncaught errors and the library's debug warnings, saves the screenshot."""

    def __init__(self, browser: Browser, name: str) -> None:
        self.context = browser.new_context()
        self.context.set_default_timeout(HANG_GUARD * 1000)
        self.name = name
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def open(self, url: str) -> Page:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.goto(url)
        return page

    def _console(self, message) -> None:
        if message.type == "warning" and message.text.startswith("[analytics]"):
            self.warnings.append(message.text)

    def screenshot(self, page: Page) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"snippet-{self.name}.png", full_page=True)


@pytest.fixture
def browsing(browser, request) -> Iterator[Browsing]:
    session = Browsing(browser, request.node.name)
    yield session
    session.context.close()
    assert not session.errors, f"uncaught JavaScript errors: {session.errors}"


# -- helpers ------------------------------------------------------------------------------
def stored(server: LiveServer, count: int, **filters: Any) -> list[dict[str, Any]]:
    """Wait until ``count`` events match ``filters``; return them, oldest first."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = server.events(source="web", **filters)
        return len(found) >= count

    eventually(enough, f"{count} stored events matching {filters}")
    return sorted(found, key=lambda event: (event["timestamp"], event["received_at"]))


def loaded(page: Page) -> None:
    page.wait_for_function("window.analytics && window.analytics.initialized === true")


def pump(page: Page) -> None:
    """Let Playwright deliver the page's events (console messages): its sync API does so
    only while it is being called."""
    page.wait_for_timeout(10)


def persisted(page: Page) -> list[dict[str, Any]]:
    """The events the library keeps in localStorage, across every page's entry."""
    raw = page.evaluate(f"localStorage.getItem({QUEUE_KEY!r})")
    entries = json.loads(raw) if raw else {}
    return [event for entry in entries.values() for event in entry["q"]]


def run(page: Page, script: str) -> None:
    """Run statements in the page (what the page's own code would do)."""
    page.evaluate(f"() => {{ {script} }}")


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event.get("event") or event["type"] for event in events]


def cookie(page: Page, name: str) -> Any:
    """A cookie's value as the library wrote it: %22-quoted JSON, as analytics.js does."""
    values = [c["value"] for c in page.context.cookies() if c["name"] == name]
    assert len(values) == 1, f"cookie {name}: {values}"
    return json.loads(unquote(values[0]))


# -- a. calls before and after the library loads ------------------------------------------
def test_calls_before_and_after_load_land_with_their_context(
    browsing: Browsing, server: LiveServer, website: Website
):
    started = datetime.now(UTC)
    website.pages["/start"] = page_html("", title="Start", body=f"<a href='/shop{UTM}'>shop</a>")
    website.pages["/shop"] = page_html(
        loader_snippet(WRITE_KEY, server.url),
        """
        window.seen = [];
        analytics.on("track", function (event) { window.seen.push(event) });
        analytics.identify("u1", {plan: "pro"});
        analytics.track("Clicked", {n: 1});
        analytics.ready(function () { analytics.track("After Load") });
        """,
    )
    page = browsing.open(f"{website.url}/start")
    page.click("a")  # so the shop page has a referrer
    page.wait_for_url(f"{website.url}/shop{UTM}")
    loaded(page)

    events = stored(server, 4)
    calls = [("page", None), ("identify", None), ("track", "Clicked"), ("track", "After Load")]
    by_call = {(e["type"], e["event"]): e for e in events}
    assert sorted(by_call, key=str) == sorted(calls, key=str) and len(events) == 4
    # in call order by time: calls made in the same millisecond tie, so "<=", not "<"
    times = [by_call[call]["timestamp"] for call in calls]
    assert times == sorted(times)
    events = [by_call[call] for call in calls]
    browser_facts = page.evaluate(
        """() => ({userAgent: navigator.userAgent, locale: navigator.language,
                   timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
                   screen: {width: screen.width, height: screen.height,
                            density: devicePixelRatio}})"""
    )
    page_context = {
        "path": "/shop",
        "referrer": f"{website.url}/start",
        "search": UTM,
        "title": "Shop",
        "url": f"{website.url}/shop{UTM}",
    }
    anonymous_id = cookie(page, "ajs_anonymous_id")
    now = datetime.now(UTC)
    for event in events:
        context = event["context"]
        assert context["page"] == page_context
        assert context["campaign"] == {"source": "news", "name": "spring"}
        assert context["library"] == {
            "name": "analytics-eventrouter",
            "version": eventrouter.__version__,
        }
        for name, value in browser_facts.items():
            assert context[name] == value, name
        assert event["anonymous_id"] == anonymous_id
        assert len(event["message_id"]) == 36
        timestamp = datetime.fromisoformat(event["timestamp"])
        assert started - timedelta(seconds=1) <= timestamp <= now
        assert event["original_timestamp"] and event["sent_at"]
    assert len({event["message_id"] for event in events}) == 4

    page_view, identify, clicked, after_load = events
    assert page_view["user_id"] is None
    assert page_view["properties"] == page_context
    assert identify["user_id"] == clicked["user_id"] == after_load["user_id"] == "u1"
    assert identify["traits"] == {"plan": "pro"}
    assert clicked["properties"] == {"n": 1}
    assert page.evaluate("window.seen") == ["Clicked", "After Load"]
    assert cookie(page, "ajs_user_id") == "u1"
    assert page.evaluate("analytics.user().traits()") == {"plan": "pro"}
    browsing.screenshot(page)


# -- b. one anonymousId per browser, until reset() -----------------------------------------
def test_anonymous_id_survives_a_reload_and_reset_makes_a_new_one(
    browsing: Browsing, server: LiveServer, website: Website
):
    website.pages["/shop"] = page_html(loader_snippet(WRITE_KEY, server.url))
    page = browsing.open(f"{website.url}/shop")
    (first,) = stored(server, 1, type="page")
    anonymous_id = first["anonymous_id"]
    assert cookie(page, "ajs_anonymous_id") == anonymous_id
    assert json.loads(page.evaluate("localStorage.getItem('ajs_anonymous_id')")) == anonymous_id

    page.reload()
    views = stored(server, 2, type="page")
    assert [view["anonymous_id"] for view in views] == [anonymous_id, anonymous_id]

    loaded(page)
    run(page, "analytics.identify('u2'); analytics.reset(); analytics.track('After Reset')")
    (after,) = stored(server, 1, event="After Reset")
    (identify,) = stored(server, 1, type="identify")
    assert identify["anonymous_id"] == anonymous_id
    assert identify["user_id"] == "u2"
    assert after["user_id"] is None
    assert after["anonymous_id"] != anonymous_id
    assert cookie(page, "ajs_anonymous_id") == after["anonymous_id"]
    assert not [c for c in page.context.cookies() if c["name"] == "ajs_user_id"]
    browsing.screenshot(page)


# -- c. the API unreachable ---------------------------------------------------------------
def test_events_wait_in_local_storage_while_the_api_is_down(
    browsing: Browsing, server: LiveServer, website: Website
):
    """The library comes from the running server, the events go to ``apiHost``: a
    loopback forwarder to the same server whose port is closed until the test opens it
    (connection refused, as with a server that is down).

    Each event is stored exactly once: a refused connection never reaches the server,
    and the reload hands the queue over through localStorage (the page leaving knows its
    last attempt failed, so it sends nothing by beacon). In general delivery is at least
    once: a batch whose answer is lost is sent again.
    """
    proxy = TcpProxy(server.port)  # not started: its port refuses connections
    snippet = loader_snippet(WRITE_KEY, server.url)
    options = {"apiHost": f"http://127.0.0.1:{proxy.port}"}
    snippet = with_queued_calls(
        with_load_options(snippet, WRITE_KEY, options), "analytics.debug(true);"
    )
    website.pages["/shop"] = page_html(snippet)

    def failed_attempts() -> int:
        pump(page)
        return sum("send failed" in warning for warning in browsing.warnings)

    page = browsing.open(f"{website.url}/shop")
    loaded(page)
    run(page, "analytics.track('Offline 1')")
    eventually(lambda: failed_attempts() >= 1, "a failed delivery attempt")
    assert names(persisted(page)) == ["page", "Offline 1"]

    # a reload while the API is still down: the next page takes the queue over
    failed_before = failed_attempts()
    page.reload()
    loaded(page)
    run(page, "analytics.track('Offline 2')")
    eventually(lambda: failed_attempts() > failed_before, "a failed attempt after the reload")
    assert Counter(names(persisted(page))) == {"page": 2, "Offline 1": 1, "Offline 2": 1}
    assert server.events(source="web") == []
    browsing.screenshot(page)

    proxy.start()  # the API is back: the next retry delivers
    try:
        events = stored(server, 4)
        assert Counter(names(events)) == {"page": 2, "Offline 1": 1, "Offline 2": 1}
        eventually(lambda: persisted(page) == [], "the persisted queue emptied")
        assert len(server.events(source="web")) == 4  # nothing twice
    finally:
        proxy.stop()


def test_an_open_tab_keeps_its_own_queue(browsing: Browsing, server: LiveServer, website: Website):
    """Two tabs of the site during an outage: the second one does not take over the
    events of the first, which is still open and retrying; each is sent once."""
    proxy = TcpProxy(server.port)  # not started: its port refuses connections
    snippet = loader_snippet(WRITE_KEY, server.url)
    options = {"apiHost": f"http://127.0.0.1:{proxy.port}"}
    website.pages["/shop"] = page_html(with_load_options(snippet, WRITE_KEY, options))
    first = browsing.open(f"{website.url}/shop")
    loaded(first)
    run(first, "analytics.track('In Tab 1')")
    second = browsing.open(f"{website.url}/shop")
    loaded(second)
    run(second, "analytics.track('In Tab 2')")
    assert Counter(names(persisted(second))) == {"page": 2, "In Tab 1": 1, "In Tab 2": 1}
    browsing.screenshot(second)

    proxy.start()
    try:
        stored(server, 4)
        eventually(lambda: persisted(second) == [], "the persisted queue emptied")
        counts = Counter(names(server.events(source="web")))
        assert counts == {"page": 2, "In Tab 1": 1, "In Tab 2": 1}
    finally:
        proxy.stop()


# -- d. closing or leaving the page ------------------------------------------------------
def test_leaving_the_page_sends_what_is_queued(
    browsing: Browsing, server: LiveServer, website: Website
):
    """With a ten-minute ``flushInterval`` nothing is sent while the page is open; the
    queue goes out by ``navigator.sendBeacon`` when the page is hidden or unloaded, and
    what the browser accepted is not sent again by the next page load."""
    snippet = loader_snippet(WRITE_KEY, server.url)
    website.pages["/shop"] = page_html(
        with_load_options(snippet, WRITE_KEY, {"flushInterval": 600_000})
    )
    website.pages["/next"] = page_html(snippet, title="Next")

    closing = browsing.open(f"{website.url}/shop")
    loaded(closing)
    run(closing, "analytics.track('Before Close')")
    assert names(persisted(closing)) == ["page", "Before Close"]  # queued, not sent
    assert server.events(source="web") == []
    browsing.screenshot(closing)
    closing.close(run_before_unload=True)
    stored(server, 1, event="Before Close")

    leaving = browsing.open(f"{website.url}/shop")
    loaded(leaving)
    run(leaving, "analytics.track('Before Navigate')")
    leaving.goto(f"{website.url}/next")
    stored(server, 1, event="Before Navigate")

    # the next page's own page view arrives with anything it adopted, in its first batch
    stored(server, 3, type="page")
    counts = Counter(names(server.events(source="web")))
    assert counts == {"page": 3, "Before Close": 1, "Before Navigate": 1}


# -- e. 429 and other refusals ------------------------------------------------------------
def test_retry_after_is_honoured_and_a_refused_batch_is_dropped(
    browsing: Browsing, server: LiveServer, website: Website
):
    """The real server answers 429 only under a rate limit and 400 only for a batch of
    invalid events, neither of which a test can ask for on demand; so here ``apiHost``
    is a scripted API. It answers the first batch 429 with ``Retry-After: 2`` (seconds),
    the retry 503 with ``Retry-After`` as an HTTP date four seconds on, then 200; and
    400 to any batch with a "Bad" event. The library itself comes from eventrouter."""
    script = [
        Answer(429, {"Retry-After": "2"}, {"code": "rate_limited", "message": "slow down"}),
        Answer(503, {"Retry-After": ""}, {"code": "unavailable", "message": "later"}),
    ]

    def answer(received: Received) -> Answer:
        if "Bad" in received.names:
            return Answer(400, body={"code": "invalid_batch", "message": "batch: no"})
        if script:
            scripted = script.pop(0)
            if scripted.status == 503:
                scripted.headers["Retry-After"] = formatdate(time.time() + 4, usegmt=True)
            return scripted
        return Answer(200)

    api = ScriptedApi(answer).start()
    try:
        options = {"apiHost": api.url, "flushInterval": 100}
        snippet = with_load_options(loader_snippet(WRITE_KEY, server.url), WRITE_KEY, options)
        website.pages["/shop"] = page_html(with_queued_calls(snippet, "analytics.track('First');"))
        # the waits the library schedules before sending again: what it decided, read
        # from the page instead of inferred from a clock
        browsing.context.add_init_script(
            """(() => {
              const set = window.setTimeout;
              window.flushWaits = [];
              window.setTimeout = function (f, ms, ...rest) {
                if (f && f.name === "flush") window.flushWaits.push(ms);
                return set.call(window, f, ms, ...rest);
              };
            })()"""
        )
        page = browsing.open(f"{website.url}/shop")
        eventually(lambda: len(api.requests()) >= 3, "two retries")
        rate_limited, unavailable, accepted = api.requests()[:3]
        assert [r.status for r in (rate_limited, unavailable, accepted)] == [429, 503, 200]
        assert rate_limited.names == ["page", "First"]
        assert rate_limited.message_ids == unavailable.message_ids == accepted.message_ids
        # Waits longer than the 100 ms flush interval are retries. The backoff alone
        # would wait 0.5-1 s, then 1-2 s.
        retries = [ms for ms in page.evaluate("window.flushWaits") if ms > 100]
        assert retries[0] == 2000  # Retry-After: 2
        assert retries[1] > 2500  # Retry-After: an HTTP date 4 s on
        assert accepted.body["sentAt"] > rate_limited.body["sentAt"]
        for request in (rate_limited, unavailable, accepted):
            assert request.content_type.startswith("text/plain")
            assert request.body["writeKey"] == WRITE_KEY

        run(page, "analytics.track('Bad')")
        eventually(lambda: "Bad" in api.requests()[-1].names, "the bad batch sent")
        run(page, "analytics.track('Good')")
        eventually(lambda: "Good" in api.requests()[-1].names, "the next batch sent")
        bad = [r for r in api.requests() if "Bad" in r.names]
        assert len(bad) == 1, "a 400 is not retried"
        assert api.requests()[-1].names == ["Good"]
        assert api.preflights == 0
        eventually(lambda: persisted(page) == [], "the persisted queue emptied")
        browsing.screenshot(page)
    finally:
        api.stop()


# -- the server's limits ------------------------------------------------------------------
def test_batches_stay_under_the_server_limits(
    browsing: Browsing, server: LiveServer, website: Website
):
    """30 events of 20 KB (600 KB) are more than one 500 KB batch may carry: the library
    splits them, so every one is stored. An event over 32 KB, which the server would
    reject, is dropped in the browser, with a warning in debug mode."""
    options = {"flushAt": 31, "flushInterval": 600_000}
    snippet = with_load_options(loader_snippet(WRITE_KEY, server.url), WRITE_KEY, options)
    calls = """
        analytics.debug(true);
        analytics.track("Too Big", {blob: "x".repeat(40 * 1024)});
        for (let i = 0; i < 30; i++) analytics.track("Big", {i: i, blob: "x".repeat(20000)});
    """
    website.pages["/shop"] = page_html(with_queued_calls(snippet, calls))
    page = browsing.open(f"{website.url}/shop")
    big = stored(server, 30, event="Big")
    assert sorted(event["properties"]["i"] for event in big) == list(range(30))
    assert server.events(source="web", event="Too Big") == []
    pump(page)
    assert any("over 32 KB" in warning for warning in browsing.warnings)
    browsing.screenshot(page)


# -- the stub's contract ------------------------------------------------------------------
def test_the_library_replaces_the_stub_once(
    browsing: Browsing, server: LiveServer, website: Website
):
    """A replayed queue of every stub method never throws; ``load`` is then a no-op and
    the global is the library (a second snippet on the page does nothing)."""
    calls = "\n".join(
        [
            "analytics.trackLink(document.getElementById('buy'), 'Buy Clicked', {where: 'top'});",
            "analytics.trackForm(document.forms, 'Form Sent');",
            "analytics.trackClick([], 'x'); analytics.trackSubmit(null, 'y');",
            "analytics.addSourceMiddleware(({payload, next}) => {",
            "  payload.obj.properties && (payload.obj.properties.via = 'middleware');",
            "  next(payload);",
            "});",
            "analytics.addIntegrationMiddleware(() => {});",
            "analytics.addDestinationMiddleware('x', []);",
            "analytics.register({name: 'plugin'});",
            "analytics.pageview('/virtual');",
            "analytics.screen('Home');",
            "analytics.group('g1', {name: 'Acme'});",
            "analytics.alias('u9');",
            "analytics.once('track', () => {}); analytics.off('track', () => {});",
            "analytics.debug(false);",
            "analytics.setAnonymousId('anon-fixed');",
        ]
    )
    # at the end of the body, as a site may paste it: the elements exist when it runs
    snippet = with_queued_calls(loader_snippet(WRITE_KEY, server.url), calls)
    body = "<a id='buy' href='#bought'>buy</a><form action='#'><button>send</button></form>"
    website.pages["/shop"] = page_html("", body=body + snippet)
    page = browsing.open(f"{website.url}/shop")
    loaded(page)
    page.click("#buy")
    events = stored(server, 6)
    assert Counter(names(events)) == {
        "page": 2,
        "screen": 1,
        "group": 1,
        "alias": 1,
        "Buy Clicked": 1,
    }
    assert {event["anonymous_id"] for event in events} == {"anon-fixed"}
    by_name = {name: event for name, event in zip(names(events), events, strict=True)}
    assert by_name["Buy Clicked"]["properties"] == {"where": "top", "via": "middleware"}
    assert by_name["group"]["group_id"] == "g1"
    assert by_name["group"]["traits"] == {"name": "Acme"}
    assert by_name["alias"]["user_id"] == "u9"
    assert by_name["alias"]["previous_id"] == "anon-fixed"
    assert by_name["screen"]["name"] == "Home"
    assert {event["properties"]["path"] for event in events if event["type"] == "page"} == {
        "/shop",
        "/virtual",
    }

    assert page.evaluate(
        """() => {
            const a = window.analytics;
            a.load("another-key", {apiHost: "http://127.0.0.1:9"});
            return [a.initialized, a._writeKey, Array.isArray(a), typeof a.initialize];
        }"""
    ) == [True, WRITE_KEY, False, "function"]
    browsing.screenshot(page)
