"""The stored-event-to-admin-action chain of issue 18, replayed in a real Chromium
(Debian's, driven by PyPI playwright exactly as tests/browser_support.py launches it).

Anyone may send events (ingestion is open here, and browser writeKeys are public). The
chain: an event whose messageId is ``../../api/v1/events/x1`` made its expanded row fetch
``/api/v1/events/x1``; that answer is JSON holding another event's property, a
``<form hx-post="/admin/privacy" hx-trigger="load">``; htmx swapped the JSON in as markup
and the form inherited the page's CSRF header. Here a signed-in admin expands the trap
row, and the test asserts that the page asks only for the row's own URL, never POSTs,
shows the trap event as text, grows no ``hx-post`` element, and that the targeted user's
events are all still stored.

The defences it leans on, each tested on its own below: ``admin.js`` swaps only
``text/html`` answers from ``/admin/`` routes (``htmx:beforeSwap``) and sends htmx
requests nowhere else (``htmx:validateUrl``); event JSON sits inside ``hx-disable``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, expect

from tests.browser_support import chromium
from tests.helpers import ADMIN_TOKEN, HANG_GUARD, LiveServer

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TIMEOUT_MS = HANG_GUARD * 1000
#: How long the page must make no request before "it made no more" is believed.
QUIET_SECONDS = 1.5
TRAP_ID = "../../api/v1/events/x1"
VICTIM = "victim"
#: Open ingestion (no [[sources]]) files every event under this source.
SOURCE = "default"


def hidden(name: str, value: str, quoted: bool = True) -> str:
    q = '"' if quoted else ""
    return f"<input type={q}hidden{q} name={q}{name}{q} value={q}{value}{q}>"


def live_form(action: str, quoted: bool = True) -> str:
    """The payload: a form htmx would POST on load, with the privacy page's fields.

    The unquoted spelling survives JSON encoding (no ``\\"``), and its ``hx-target``
    overrides the ``find .json`` it would otherwise inherit from the row (a target it
    cannot find, which alone kept the original reproduction from POSTing)."""
    q = '"' if quoted else ""
    target = "" if quoted else " hx-target=this"
    return (
        f"<form hx-post={q}/admin/privacy{q} hx-trigger={q}load{q}{target}>"
        + hidden("action", action, quoted)
        + hidden("user_id", VICTIM, quoted)
        + hidden("confirm", VICTIM, quoted)
        + "</form>"
    )


PAYLOAD_PROPERTIES = {
    "form": live_form("delete"),
    "form_unquoted": live_form("delete", quoted=False),
    "review_unquoted": live_form("review", quoted=False),
}


def row_url(message_id: str, source: str) -> str:
    """The URL an event row fetches (docs/admin.md, "Escaping and the dashboard")."""
    return f"/admin/event?message_id={quote(message_id, safe='')}&source={quote(source, safe='')}"


# -- the browser and the server --------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with chromium() as browser:
        yield browser


class Tab:
    """One page, with every request it makes and what its console warns about."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.last = time.monotonic()
        page.on("request", self._on_request)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"JS error: {error}"))

    def _on_request(self, request: Request) -> None:
        self.requests.append((request.method, request.url))
        self.last = time.monotonic()

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "warning":
            self.warnings.append(message.text)
        elif message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(f"CSP violation: {message.text}")

    def quiet(self) -> None:
        """Wait until the page has made no request for QUIET_SECONDS, counted from now
        or from its last request, whichever is later (bounded)."""
        start = time.monotonic()
        # Playwright delivers the page's events only while it is called, so this waits
        # with wait_for_timeout (not tests.helpers.eventually), at most HANG_GUARD.
        for _ in range(int(HANG_GUARD / 0.1)):
            if time.monotonic() - max(self.last, start) >= QUIET_SECONDS:
                return
            self.page.wait_for_timeout(100)
        pytest.fail("the page never stopped making requests")

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.requests[mark:]


@pytest.fixture
def tab(browser) -> Iterator[Tab]:
    context = browser.new_context()
    # Tests talk to 127.0.0.1 only.
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    tab = Tab(page)
    yield tab
    context.close()
    assert not tab.errors, "the browser reported:\n" + "\n".join(tab.errors)


def sign_in(page: Page, base_url: str) -> None:
    page.goto(base_url + "/admin/events")
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    page.locator("input[name=token]").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base_url + "/admin/events")
    # The explorer's own lazy panels (chart, top events, event names) have loaded.
    expect(page.locator("#chart figure.chart")).to_have_count(1)
    expect(page.locator("#top-events .loading")).to_have_count(0)
    expect(page.locator("datalist#event-names[hx-get]")).to_have_count(0)


def send(server: LiveServer, body: dict) -> None:
    response = server.post("/v1/track", body)
    assert response.status_code == 200, response.text


def victim_ids(server: LiveServer) -> list[str]:
    return sorted(e["message_id"] for e in server.events(user_id=VICTIM))


def hx_post_elements(page: Page) -> list[str]:
    return page.locator("[hx-post], [data-hx-post]").evaluate_all(
        "elements => elements.map(e => e.outerHTML)"
    )


# -- the chain ---------------------------------------------------------------------------------
def test_expanding_a_trap_row_fetches_only_its_own_url_and_posts_nothing(tab, server):
    page = tab.page
    victims = [f"victim-{i}" for i in range(5)]
    for message_id in victims:
        send(server, {"event": "Bought", "userId": VICTIM, "messageId": message_id})
    send(server, {"event": "Payload", "userId": "mallory", "messageId": "x1",
                  "properties": PAYLOAD_PROPERTIES})  # fmt: skip
    send(server, {"event": "Trap", "userId": "mallory", "messageId": TRAP_ID})
    assert victim_ids(server) == victims

    sign_in(page, server.url)
    row = page.locator("#event-list details.event").and_(
        page.locator(f"[data-message-id={json.dumps(TRAP_ID)}]")
    )
    expect(row).to_have_count(1)
    own_hx_posts = hx_post_elements(page)
    tab.quiet()
    mark = len(tab.requests)

    row.locator("summary").click()
    expect(row).to_have_attribute("open", "")
    expect(row.locator(".json .loading")).to_have_count(0)
    tab.quiet()  # whatever the swapped answer would trigger has had its chance

    after = tab.since(mark)
    shown = row.locator(".json").inner_text()
    hx_posts = hx_post_elements(page)
    stored = victim_ids(server)
    print(f"requests after the click: {after}\nhx-post elements: {hx_posts}")
    print(f"expanded panel text: {shown[:300]!r}\nvictim's stored events: {stored}")

    assert [method for method, _ in tab.requests if method == "POST"] == [
        "POST"  # the sign-in form, before the click
    ], tab.requests
    assert after == [("GET", server.url + row_url(TRAP_ID, SOURCE))]
    assert row.get_attribute("hx-get") == row_url(TRAP_ID, SOURCE)
    assert hx_posts == own_hx_posts
    assert page.locator("#event-list form, #event-list input").count() == 0
    assert stored == victims
    # The trap event itself, as text, inside an element htmx leaves alone.
    listed = server.client.get("/api/v1/events", params={"user_id": "mallory"}, headers=BEARER)
    [trap] = [e for e in listed.json()["events"] if e["message_id"] == TRAP_ID]
    assert json.loads(row.locator(".json pre").inner_text()) == trap
    expect(row.locator(".json")).to_have_attribute("hx-disable", "")


def test_the_payload_event_expands_to_inert_text(tab, server):
    """The payload's own row: its form is text in a <pre>, never a form."""
    page = tab.page
    send(server, {"event": "Bought", "userId": VICTIM, "messageId": "victim-0"})
    send(server, {"event": "Payload", "userId": "mallory", "messageId": "x1",
                  "properties": PAYLOAD_PROPERTIES})  # fmt: skip
    sign_in(page, server.url)
    row = page.locator('#event-list details.event[data-message-id="x1"]')
    mark = len(tab.requests)
    row.locator("summary").click()
    pre = row.locator(".json pre")
    expect(pre).to_contain_text('"form_unquoted"')
    tab.quiet()
    assert tab.since(mark) == [("GET", server.url + row_url("x1", SOURCE))]
    assert json.loads(pre.inner_text())["properties"] == PAYLOAD_PROPERTIES
    assert row.locator("form, input, [hx-post], [hx-get], [hx-trigger]").count() == 0
    assert victim_ids(server) == ["victim-0"]


# -- the defences, one at a time ---------------------------------------------------------------
def fulfil(body: str, content_type: str):
    def handler(route: Route) -> None:
        route.fulfill(status=200, body=body, headers={"Content-Type": content_type})

    return handler


SWAPPED_MARKUP = '<b id="swapped" hx-get="/admin/status" hx-trigger="load">swapped</b>'


def htmx_get(page: Page, url: str) -> None:
    """``htmx.ajax`` into a scratch element added to the page."""
    page.evaluate(
        """async url => {
            const box = document.createElement("div");
            box.id = "scratch";
            document.body.append(box);
            try { await htmx.ajax("GET", url, {target: "#scratch", swap: "innerHTML"}); }
            catch (e) { /* a refused URL rejects the promise: that is the point */ }
        }""",
        url,
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/plain", "application/xhtml+xml", "text/htmlx"],
)
def test_htmx_swaps_no_answer_that_is_not_text_html(tab, server, content_type):
    page = tab.page
    sign_in(page, server.url)
    page.route("**/admin/not-html", fulfil(SWAPPED_MARKUP, content_type))
    htmx_get(page, "/admin/not-html")
    tab.quiet()
    assert page.locator("#scratch").inner_html() == ""
    assert page.locator("#swapped").count() == 0
    assert any("not swapped" in w and "/admin/not-html" in w for w in tab.warnings), tab.warnings


def test_htmx_swaps_text_html_from_a_dashboard_route(tab, server):
    """The control: the same markup as text/html from /admin/ is swapped."""
    page = tab.page
    sign_in(page, server.url)
    page.route("**/admin/fragment", fulfil("<i id=swapped>ok</i>", "text/html; charset=utf-8"))
    htmx_get(page, "/admin/fragment")
    expect(page.locator("#scratch #swapped")).to_have_text("ok")


def test_htmx_swaps_no_html_that_was_redirected_off_the_dashboard(tab, server):
    """An /admin/ URL that ends elsewhere (a redirect): the final path decides."""
    page = tab.page
    sign_in(page, server.url)
    page.route(
        "**/admin/bounce",
        lambda route: route.fulfill(status=302, headers={"Location": "/elsewhere/page"}),
    )
    page.route("**/elsewhere/page", fulfil(SWAPPED_MARKUP, "text/html"))
    htmx_get(page, "/admin/bounce")
    tab.quiet()
    assert ("GET", server.url + "/elsewhere/page") in tab.requests  # it did get there
    assert page.locator("#scratch").inner_html() == ""
    assert any("/elsewhere/page" in w for w in tab.warnings), tab.warnings


@pytest.mark.parametrize("url", ["/api/v1/events/x1", "/openapi.json", "/admin/../api/v1/events"])
def test_htmx_requests_nothing_outside_the_dashboard(tab, server, url):
    page = tab.page
    sign_in(page, server.url)
    tab.quiet()
    mark = len(tab.requests)
    htmx_get(page, url)
    tab.quiet()
    assert tab.since(mark) == []
    assert any("refused" in w for w in tab.warnings), tab.warnings


def test_htmx_processes_nothing_inside_event_json(tab, server):
    """Markup put inside the expanded JSON's hx-disable element stays unprocessed even
    when htmx is asked to process it: its load trigger requests nothing."""
    page = tab.page
    send(server, {"event": "Plain", "userId": "u", "messageId": "plain-1"})
    sign_in(page, server.url)
    row = page.locator('#event-list details.event[data-message-id="plain-1"]')
    row.locator("summary").click()
    expect(row.locator(".json pre")).to_contain_text('"plain-1"')
    tab.quiet()
    mark = len(tab.requests)
    page.evaluate(
        """() => {
            const json = document.querySelector('details[data-message-id="plain-1"] .json');
            json.insertAdjacentHTML("beforeend",
                '<button id="probe" hx-get="/admin/status" hx-trigger="load" '
                + 'hx-target="this" hx-swap="none">x</button>');
            htmx.process(json);
        }"""
    )
    tab.quiet()
    assert tab.since(mark) == []
    # Outside hx-disable the same markup does fire (the probe is a fair one).
    page.evaluate(
        """() => {
            document.body.insertAdjacentHTML("beforeend",
                '<button id="probe2" hx-get="/admin/status" hx-trigger="load" '
                + 'hx-swap="none">x</button>');
            htmx.process(document.getElementById("probe2"));
        }"""
    )
    tab.quiet()
    assert tab.since(mark) == [("GET", server.url + "/admin/status")]


def test_htmx_config_is_strict(tab, server):
    page = tab.page
    sign_in(page, server.url)
    config = page.evaluate(
        "() => ({self: htmx.config.selfRequestsOnly, scripts: htmx.config.allowScriptTags,"
        " eval: htmx.config.allowEval, history: htmx.config.historyCacheSize})"
    )
    assert config == {"self": True, "scripts": False, "eval": False, "history": 0}
