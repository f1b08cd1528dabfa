"""The admin dashboard end to end, in a real headless Chromium (Debian's, never a
downloaded one): sign-in, the explorer's filters, pages, event JSON, chart and
breakdowns, the live tail (embedded store, two gunicorn workers, RabbitMQ), inert XSS
payloads, the status and sources pages.

Every page a test visits is saved to ``tests/artifacts/screenshots/<test>-<step>.png``.
Every test fails if the browser reports a Content-Security-Policy violation, an uncaught
JavaScript error or a dialog (``alert``), or tries to reach beyond 127.0.0.1. Waits are
bounded by ``HANG_GUARD``; nothing is timed.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Route,
    expect,
)

from tests.browser_support import SCREENSHOTS, chromium
from tests.helpers import ADMIN_TOKEN, HANG_GUARD, LiveServer, ServeProcess
from tests.queue_support import amqp_env, to_toml, unique  # noqa: F401 - fixture

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

#: Any http(s) URL not on 127.0.0.1.
OFF_LOOPBACK = re.compile(r"^https?://(?!127\.0\.0\.1[:/])")
TIMEOUT_MS = HANG_GUARD * 1000
WRITE_KEY = "wk-web"
SOURCES = [{"name": "web", "write_key": WRITE_KEY}]
AUTH = (WRITE_KEY, "")
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: The seeded events' names, by ``i % 5``: 90 "Order Completed", 30 of each other.
SEED_NAMES = ("Order Completed", "Order Completed", "Order Completed", "Signed Up", "Clicked")


# -- the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def screenshot_dir() -> Path:
    """Where the screenshots go (gitignored, with the rest of tests/artifacts/)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


class Tab:
    """One browser page of one test: screenshots each step, and records what must
    never happen (CSP violations, uncaught JS errors, dialogs)."""

    def __init__(self, page: Page, name: str, directory: Path) -> None:
        self.page = page
        self.name = re.sub(r"[^\w.-]+", "_", name)
        self.directory = directory
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.problems.append(f"JS error: {error}"))
        page.on("dialog", self._on_dialog)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.problems.append(f"CSP violation: {message.text}")

    def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def refuse(self, route: Route) -> None:
        """Tests talk to 127.0.0.1 only: anything else is refused, and fails the test."""
        self.problems.append(f"request off loopback: {route.request.url}")
        route.abort()

    def shot(self, step: str) -> None:
        path = self.directory / f"{self.name}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)


@pytest.fixture
def tab(browser, screenshot_dir, request) -> Iterator[Tab]:
    context = browser.new_context()
    tab = Tab(context.new_page(), request.node.name, screenshot_dir)
    context.route(OFF_LOOPBACK, tab.refuse)
    yield tab
    context.close()
    assert not tab.problems, "the browser reported:\n" + "\n".join(tab.problems)
    assert not tab.dialogs, "a dialog opened:\n" + "\n".join(tab.dialogs)


def sign_in(tab: Tab, base_url: str, path: str = "/admin/events") -> None:
    """Open ``path``, get sent to the sign-in form, sign in there, land back on ``path``."""
    page = tab.page
    page.goto(base_url + path)
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    tab.shot("sign-in")
    page.locator("input[name=token]").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base_url + path)


# -- the servers -----------------------------------------------------------------------------
@pytest.fixture
def dashboard(start_server) -> LiveServer:
    """The embedded default (SQLite store in tmp_path) with one source, ``web``."""
    return start_server({"sources": SOURCES})


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[..., ServeProcess]]:
    """Real ``eventrouter serve`` processes (gunicorn) with the source ``web``, stopped
    after the test."""
    processes: list[ServeProcess] = []

    def start(raw: dict[str, Any], workers: int = 2) -> ServeProcess:
        path = tmp_path / f"{unique('serve')}.toml"
        # to_toml writes no arrays of tables: the [[sources]] go last, by hand.
        sources = "".join(
            f"\n[[sources]]\nname = {json.dumps(source['name'])}\n"
            f"write_key = {json.dumps(source['write_key'])}\n"
            for source in SOURCES
        )
        path.write_text(to_toml(raw) + sources, encoding="utf-8")
        process = ServeProcess(tmp_path, "--config", str(path), workers=workers)
        processes.append(process)
        return process.wait_ready()

    yield start
    for process in processes:
        process.stop()
        print(f"--- {process.log_path}:\n{process.log()}")  # shown if the test failed


def seed(server: LiveServer, count: int = 150) -> list[dict[str, Any]]:
    """``count`` track calls one second apart (``msg-000`` oldest), in one batch."""
    now = datetime.now(UTC)
    batch = [
        {
            "type": "track",
            "event": SEED_NAMES[i % 5],
            "userId": f"user-{i % 7}",
            "messageId": f"msg-{i:03d}",
            "timestamp": (now - timedelta(seconds=count - i)).isoformat(),
            "properties": {"plan": "pro" if i % 3 == 0 else "free", "sku": f"sku-{i:03d}"},
        }
        for i in range(count)
    ]
    response = server.post("/v1/batch", {"batch": batch}, auth=AUTH)
    assert response.status_code == 200, response.text
    return batch


def track(url: str, event: str, **fields: Any) -> str:
    """One track call over a new connection; returns its messageId."""
    message_id = unique("live-")
    body = {"event": event, "userId": "watcher", "messageId": message_id, **fields}
    with httpx.Client(base_url=url, timeout=HANG_GUARD) as client:
        response = client.post("/v1/track", json=body, auth=AUTH)
    assert response.status_code == 200, response.text
    return message_id


# -- reading pages ---------------------------------------------------------------------------
def row_ids(page: Page, list_selector: str = "#event-list") -> list[str]:
    return page.locator(f"{list_selector} details.event").evaluate_all(
        "rows => rows.map(row => row.dataset.messageId)"
    )


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def breakdown_rows(page: Page, selector: str) -> dict[str, int]:
    cells = page.locator(f"{selector} table.breakdown tr").evaluate_all(
        "rows => rows.map(row => [row.querySelector('.value').textContent.trim(),"
        " row.querySelector('.count').textContent.trim()])"
    )
    return {value: int(count.replace(",", "")) for value, count in cells}


def live_row(page: Page, message_id: str) -> Locator:
    return page.locator("#live-rows details.event").and_(
        page.locator(f'[data-message-id="{message_id}"]')
    )


def wait_until_live(page: Page) -> None:
    """The server sends the controls once the socket is subscribed to the feed."""
    expect(page.locator("#live-controls .badge")).to_have_text("Live")


# -- 1. sign-in ------------------------------------------------------------------------------
def test_sign_in_and_sign_out(tab, dashboard):
    page = tab.page
    page.goto(f"{dashboard.url}/admin/events")
    expect(page).to_have_url(f"{dashboard.url}/admin/login?next=%2Fadmin%2Fevents")
    expect(page.locator("input[name=token]")).to_be_visible()
    tab.shot("login")

    page.locator("input[name=token]").fill("not-the-admin-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".login .error")).to_have_text("That admin token is not valid.")
    expect(page).to_have_url(f"{dashboard.url}/admin/login")
    expect(page.locator("input[name=token]")).to_be_visible()
    tab.shot("wrong-token")

    page.locator("input[name=token]").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{dashboard.url}/admin/events")
    expect(page.locator("h1")).to_have_text("Events")
    expect(page.locator("form#filters")).to_be_visible()
    tab.shot("explorer")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{dashboard.url}/admin/login")
    expect(page.locator("input[name=token]")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    tab.shot("signed-out")

    page.goto(f"{dashboard.url}/admin/events")
    expect(page).to_have_url(f"{dashboard.url}/admin/login?next=%2Fadmin%2Fevents")
    expect(page.locator("input[name=token]")).to_be_visible()
    tab.shot("signed-out-explorer")


# -- 2. filters ------------------------------------------------------------------------------
def test_filter_by_event_and_property(tab, dashboard):
    posted = seed(dashboard)
    wanted = [
        e["messageId"]
        for e in reversed(posted)
        if e["event"] == "Order Completed" and e["properties"]["plan"] == "pro"
    ]
    stored = dashboard.events(event="Order Completed", **{"properties.plan": "pro"})
    assert [e["message_id"] for e in stored] == wanted
    assert 0 < len(wanted) < 50  # one page

    page = tab.page
    sign_in(tab, dashboard.url)
    rows = page.locator("#event-list details.event")
    expect(rows).to_have_count(50)
    tab.shot("unfiltered")

    form = page.locator("form#filters")
    form.locator("input[name=event]").fill("Order Completed")
    form.locator("input[name=where]").first.fill("properties.plan = pro")
    form.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"properties\.plan=pro"))
    assert query_of(page.url) == {"event": ["Order Completed"], "properties.plan": ["pro"]}
    expect(rows).to_have_count(len(wanted))
    assert row_ids(page) == wanted
    expect(page.locator("#event-list .name")).to_have_text(["Order Completed"] * len(wanted))
    expect(page.locator("nav.pager a.older")).to_have_count(0)
    tab.shot("filtered")

    page.reload()  # the pushed URL is a bookmark: the same list, the same form
    expect(rows).to_have_count(len(wanted))
    assert row_ids(page) == wanted
    expect(form.locator("input[name=event]")).to_have_value("Order Completed")
    expect(form.locator("input[name=where]").first).to_have_value("properties.plan = pro")
    tab.shot("reloaded")

    conditions = form.locator("#conditions input[name=where]")
    before = conditions.count()
    form.get_by_role("button", name="+ condition").click()
    expect(conditions).to_have_count(before + 1)
    expect(conditions.last).to_have_value("")
    tab.shot("another-condition")


# -- 3. keyset pages -------------------------------------------------------------------------
def test_page_through_results(tab, dashboard):
    posted = seed(dashboard)
    newest_first = [e["messageId"] for e in reversed(posted) if e["event"] == "Order Completed"]
    assert len(newest_first) > 50
    assert [e["message_id"] for e in dashboard.events(event="Order Completed")] == newest_first

    page = tab.page
    path = "/admin/events?event=Order+Completed"
    sign_in(tab, dashboard.url, path)
    rows = page.locator("#event-list details.event")
    expect(rows).to_have_count(50)
    first = row_ids(page)
    first_times = page.locator("#event-list time").evaluate_all(
        "times => times.map(t => t.getAttribute('datetime'))"
    )
    tab.shot("first-page")

    page.locator("nav.pager a.older").click()
    expect(page).to_have_url(re.compile(r"cursor="))
    assert query_of(page.url)["event"] == ["Order Completed"]
    expect(rows).to_have_count(len(newest_first) - 50)
    second = row_ids(page)
    second_times = page.locator("#event-list time").evaluate_all(
        "times => times.map(t => t.getAttribute('datetime'))"
    )
    tab.shot("second-page")

    assert not set(first) & set(second)
    assert first + second == newest_first
    times = [datetime.fromisoformat(t) for t in first_times + second_times]
    assert times == sorted(times, reverse=True)

    page.go_back()  # htmx keeps no snapshot: the browser reloads the first page's URL
    expect(page).to_have_url(dashboard.url + path)
    expect(rows).to_have_count(50)
    assert row_ids(page) == first
    tab.shot("back")


# -- 4. one event ----------------------------------------------------------------------------
def test_open_an_event_shows_its_json(tab, dashboard):
    posted = seed(dashboard, count=10)
    newest = posted[-1]
    page = tab.page
    sign_in(tab, dashboard.url)
    row = page.locator("#event-list details.event").first
    expect(row).to_have_attribute("data-message-id", newest["messageId"])
    row.locator("summary").click()
    expect(row).to_have_attribute("open", "")
    pre = row.locator(".json pre")
    expect(pre).to_contain_text(f'"message_id": "{newest["messageId"]}"')
    expect(pre).to_contain_text(f'"sku": "{newest["properties"]["sku"]}"')
    tab.shot("opened")

    shown = json.loads(pre.inner_text())
    stored = dashboard.client.get(f"/api/v1/events/{newest['messageId']}", headers=BEARER)
    assert stored.status_code == 200
    assert shown == stored.json()
    assert shown["properties"] == newest["properties"]


# -- 5. chart and breakdowns -------------------------------------------------------------------
def test_chart_and_breakdowns_follow_the_filters(tab, dashboard):
    posted = seed(dashboard)
    page = tab.page
    sign_in(tab, dashboard.url)
    chart = page.locator("#chart figure.chart")
    expect(chart).to_have_attribute("data-total", str(len(posted)))
    expect(page.locator("#top-events table.breakdown")).to_be_visible()
    assert breakdown_rows(page, "#top-events") == Counter(e["event"] for e in posted)
    tab.shot("unfiltered")

    signed_up = [e for e in posted if e["event"] == "Signed Up"]
    form = page.locator("form#filters")
    form.locator("input[name=event]").fill("Signed Up")
    form.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"event=Signed"))
    expect(chart).to_have_attribute("data-total", str(len(signed_up)))
    expect(page.locator("#top-events .breakdown .value")).to_have_text(["Signed Up"])
    tab.shot("filtered")

    form.locator("input[name=breakdown]").fill("properties.plan")
    form.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"breakdown=properties\.plan"))
    panel = page.locator("#breakdown")
    expect(panel.locator("h2")).to_have_text("By properties.plan")
    expect(panel.locator("table.breakdown .value")).to_have_count(2)
    plans = Counter(e["properties"]["plan"] for e in signed_up)
    assert set(plans) == {"pro", "free"}
    assert breakdown_rows(page, "#breakdown") == plans
    tab.shot("breakdown")


# -- 6. live tail, embedded store -------------------------------------------------------------
def test_live_tail_pause_and_resume(tab, dashboard):
    page = tab.page
    sign_in(tab, dashboard.url, "/admin/live")
    expect(page.locator("div.live")).to_have_attribute("data-feed", "store")
    wait_until_live(page)
    tab.shot("live")
    rows = page.locator("#live-rows details.event")

    first = track(dashboard.url, "Live One")
    expect(live_row(page, first)).to_be_visible()
    expect(rows).to_have_count(1)
    tab.shot("first-event")

    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#live-controls .badge")).to_have_text("Paused")
    second = track(dashboard.url, "Live Two")
    expect(page.locator("#live-controls .held")).to_have_text("1 new event waiting")
    assert rows.count() == 1
    assert live_row(page, second).count() == 0
    tab.shot("paused")

    page.get_by_role("button", name="Resume").click()
    expect(live_row(page, second)).to_be_visible()
    expect(rows).to_have_count(2)
    assert row_ids(page, "#live-rows") == [second, first]  # newest first
    wait_until_live(page)
    tab.shot("resumed")


def test_live_tail_applies_its_filters(tab, dashboard):
    page = tab.page
    sign_in(tab, dashboard.url, "/admin/live?event=Only%20This")
    expect(page.locator("form#filters input[name=event]")).to_have_value("Only This")
    wait_until_live(page)
    other = track(dashboard.url, "Other")
    only = track(dashboard.url, "Only This")
    expect(live_row(page, only)).to_be_visible()
    # "Other" was stored before "Only This": had the filter let it through, it would be
    # on the page by now.
    assert live_row(page, other).count() == 0
    assert row_ids(page, "#live-rows") == [only]
    tab.shot("filtered")


# -- 7. live tail across gunicorn workers -----------------------------------------------------
def _children(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def _accepting_pid(response: httpx.Response, server_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server end of ``response``'s (still open) connection:
    the socket inode from /proc/net/tcp*, then the process with that inode among its fds."""
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{server_port:04X}") and fields[2].endswith(
                f":{client_port:04X}"
            ):
                inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@pytest.mark.slow
def test_live_tail_sees_every_worker(tab, serve):
    """Two gunicorn workers share the embedded SQLite store; the page's socket is held by
    one of them. Each event goes over its own connection, and the test looks up in /proc
    which worker process accepted it: it posts until both workers have taken some."""
    process = serve({"admin": {"token": ADMIN_TOKEN}}, workers=2)
    workers = _children(process.process.pid)
    assert len(workers) == 2, workers
    page = tab.page
    sign_in(tab, process.url, "/admin/live")
    wait_until_live(page)
    tab.shot("live")

    posted: list[str] = []
    accepted_by: Counter[int | None] = Counter()
    while len(posted) < 20 or len(set(accepted_by) & workers) < 2:
        assert len(posted) < 200, f"every connection went to one worker: {accepted_by}"
        message_id = f"spread-{len(posted):03d}"
        with httpx.Client(base_url=process.url, timeout=HANG_GUARD) as client:
            body = {"event": f"Spread {len(posted):03d}", "userId": "w", "messageId": message_id}
            response = client.post("/v1/track", json=body, auth=AUTH)
            assert response.status_code == 200, response.text
            accepted_by[_accepting_pid(response, process.port, workers)] += 1
        posted.append(message_id)

    rows = page.locator("#live-rows details.event")
    expect(rows).to_have_count(len(posted))
    assert sorted(row_ids(page, "#live-rows")) == sorted(posted)
    tab.shot("all-events")


# -- 8. live tail fed by the broker ------------------------------------------------------------
@pytest.mark.slow
def test_live_tail_from_the_broker(amqp_env, serve, tab):  # noqa: F811
    """The edge publishes to RabbitMQ and no worker runs: nothing reaches the store, so
    whatever the tail shows came from the broker."""
    process = serve(amqp_env.raw(), workers=2)
    page = tab.page
    sign_in(tab, process.url, "/admin/live")
    expect(page.locator("div.live")).to_have_attribute("data-feed", "broker")
    wait_until_live(page)
    tab.shot("live")

    posted = [track(process.url, f"Queued {i}") for i in range(5)]
    for message_id in posted:
        expect(live_row(page, message_id)).to_be_visible()
    assert sorted(row_ids(page, "#live-rows")) == sorted(posted)
    assert amqp_env.stored_ids() == []
    tab.shot("events")


# -- 9. XSS ----------------------------------------------------------------------------------
EVENT_PAYLOAD = "<img src=x onerror=alert(1)>"
PROPERTY_PAYLOAD = "<script>alert(1)</script>"
TRAIT_PAYLOAD = '"><img src=x onerror=alert(2)>'
ID_PAYLOAD = '"><img src=x onerror=alert(3)>'


def assert_inert(tab: Tab, step: str) -> None:
    page = tab.page
    tab.shot(step)
    assert page.locator("img[src=x]").count() == 0, step
    assert page.locator("[onerror]").count() == 0, step
    scripts = page.locator("script").evaluate_all(
        "scripts => scripts.filter(s => s.textContent.includes('alert')).length"
    )
    assert scripts == 0, step


def test_payloads_in_events_stay_text(tab, dashboard):
    user = "xss-user"
    for body in (
        {
            "type": "track",
            "event": EVENT_PAYLOAD,
            "userId": user,
            "messageId": ID_PAYLOAD,
            "properties": {"note": PROPERTY_PAYLOAD},
        },
        {"type": "identify", "userId": user, "traits": {"name": TRAIT_PAYLOAD}},
    ):
        response = dashboard.post(f"/v1/{body['type']}", body, auth=AUTH)
        assert response.status_code == 200, response.text
    page = tab.page

    sign_in(tab, dashboard.url)
    row = page.locator("#event-list details.event").filter(has_text=EVENT_PAYLOAD)
    expect(row.locator(".name")).to_have_text(EVENT_PAYLOAD)
    expect(page.locator("#top-events .value")).to_contain_text([EVENT_PAYLOAD])
    row.locator("summary").click()
    pre = row.locator(".json pre")
    expect(pre).to_contain_text(json.dumps(PROPERTY_PAYLOAD))
    shown = json.loads(pre.inner_text())
    assert (shown["event"], shown["message_id"]) == (EVENT_PAYLOAD, ID_PAYLOAD)
    assert_inert(tab, "explorer")

    page.goto(f"{dashboard.url}/admin/events?breakdown=properties.note")
    # The identify call has no properties.note: it is the "(none)" row.
    expect(page.locator("#breakdown .value")).to_have_text(["(none)", PROPERTY_PAYLOAD])
    assert_inert(tab, "breakdown")

    page.goto(f"{dashboard.url}/admin/users/{quote(user)}")
    expect(page.locator("table.traits td")).to_have_text([TRAIT_PAYLOAD])
    expect(page.get_by_text(EVENT_PAYLOAD, exact=True)).to_be_visible()
    assert_inert(tab, "user")

    page.goto(f"{dashboard.url}/admin/live")
    wait_until_live(page)
    live = track(dashboard.url, EVENT_PAYLOAD, properties={"note": PROPERTY_PAYLOAD})
    row = live_row(page, live)
    expect(row.locator(".name")).to_have_text(EVENT_PAYLOAD)
    row.locator("summary").click()
    expect(row.locator(".json pre")).to_contain_text(json.dumps(PROPERTY_PAYLOAD))
    assert_inert(tab, "live")


# -- 10. status and sources --------------------------------------------------------------------
def test_status_page_lists_each_sink_and_the_store(tab, start_server, tmp_path):
    sinks = {
        "local": {"type": "sqlite", "url": f"sqlite:///{tmp_path / 'local.db'}"},
        "mirror": {"type": "sqlite", "url": f"sqlite:///{tmp_path / 'mirror.db'}"},
    }
    server = start_server({"sources": SOURCES, "sinks": sinks, "admin": {"store": "local"}})
    posted = seed(server, count=7)
    page = tab.page

    sign_in(tab, server.url, "/admin/status")
    tab.shot("status")
    # Rendered by the server in one response: nothing on this page changes after load.
    shown = page.locator("table.status tr[data-sink]").evaluate_all(
        "rows => rows.map(row => Array.from(row.cells, cell => cell.textContent.trim()))"
    )
    # Embedded mode: both sinks write in this process, and both are healthy.
    assert [row[:3] for row in shown] == [[name, "sqlite", "up"] for name in sinks]
    assert page.locator("dl.store dd.events").inner_text() == str(len(posted))


def test_sources_page_shows_a_working_snippet(tab, dashboard):
    page = tab.page
    sign_in(tab, dashboard.url)
    page.get_by_role("link", name="Sources").click()
    expect(page).to_have_url(f"{dashboard.url}/admin/sources")
    source = page.locator('section.source[data-source="web"]')
    expect(source.locator("h2")).to_have_text("web")
    expect(source.locator("dd code").first).to_have_text(WRITE_KEY)
    snippet = source.locator("pre.snippet")
    expect(snippet).to_contain_text(f'"{WRITE_KEY}"')
    expect(snippet).to_contain_text(dashboard.url)
    tab.shot("sources")

    # The snippet builds the library's URL from the key (as Segment's does), so the path
    # is checked where it matters: pasted into a page, it loads our library for the key.
    library = f"{dashboard.url}/analytics.js/v1/{WRITE_KEY}/analytics.min.js"
    pasted = page.context.new_page()
    with pasted.expect_request(library, timeout=TIMEOUT_MS) as request:
        pasted.set_content(f"<!doctype html><head>{snippet.inner_text()}</head><body></body>")
    assert request.value.response().status == 200


# -- privacy: review, tick linked ids, confirm ------------------------------------------------
def test_privacy_review_tick_and_confirm(tab, dashboard):
    """A deletion follows only the linked ids ticked and reviewed; suppress and
    unsuppress go through their own review. Every step posts the review's token."""
    batch = [
        {"type": "track", "event": "Viewed", "userId": "victim", "messageId": "p-victim-1"},
        {"type": "track", "event": "Viewed", "userId": "victim", "messageId": "p-victim-2"},
        {"type": "track", "event": "Viewed", "userId": "mallory", "messageId": "p-mallory"},
        {"type": "alias", "userId": "mallory", "previousId": "victim", "messageId": "p-alias"},
    ]
    assert dashboard.post("/v1/batch", {"batch": batch}, auth=AUTH).status_code == 200
    page = tab.page
    sign_in(tab, dashboard.url, "/admin/privacy")
    page.locator(".privacy-delete input[name=user_id]").fill("mallory")
    page.get_by_role("button", name="Review deletion").click()
    expect(page.locator("h1")).to_have_text("Delete the data of user mallory?")
    victim = page.locator('tr[data-linked="victim"]')
    expect(victim.locator("td.kind")).to_have_text("previous_id")
    expect(victim.locator("td.events")).to_have_text("2")
    expect(victim.locator("input[name=follow]")).not_to_be_checked()
    expect(page.locator('tr[data-sink="local"] td.events')).to_have_text("2")
    tab.shot("review")

    # Ticked after the counts were shown, then Delete: the new set is reviewed instead.
    victim.locator("input[name=follow]").check()
    page.locator("input[name=confirm]").fill("mallory")
    page.get_by_role("button", name="Delete permanently").click()
    expect(page.locator(".error")).to_contain_text("The ids sent differ from those reviewed")
    expect(page.locator('tr[data-sink="local"] td.events')).to_have_text("4")
    expect(page.locator('tr[data-linked="victim"] input[name=follow]')).to_be_checked()
    tab.shot("reviewed-again")
    assert len(dashboard.events()) == 4

    page.locator("input[name=confirm]").fill("mallory")
    page.get_by_role("button", name="Delete permanently").click()
    expect(page.locator("h1")).to_have_text("User mallory: data deleted")
    expect(page.locator('tr[data-sink="local"] td.events')).to_have_text("4")
    tab.shot("deleted")
    assert dashboard.events() == []

    page.get_by_role("link", name="Back to Privacy").click()
    page.locator(".privacy-suppress input[name=id]").fill("u-gone")
    page.get_by_role("button", name="Review suppression").click()
    expect(page.locator("h1")).to_have_text("Suppress user_id u-gone?")
    tab.shot("suppress-review")
    page.get_by_role("button", name="Suppress").click()
    expect(page.locator(".notice")).to_have_text("user_id 'u-gone' suppressed.")
    page.locator('tr[data-suppressed="user_id:u-gone"]').get_by_role(
        "button", name="Unsuppress…"
    ).click()
    expect(page.locator("h1")).to_have_text("Unsuppress user_id u-gone?")
    page.get_by_role("button", name="Unsuppress").click()
    expect(page.locator(".notice")).to_have_text("user_id 'u-gone' is no longer suppressed.")
    expect(page.locator('tr[data-suppressed="user_id:u-gone"]')).to_have_count(0)
    tab.shot("unsuppressed")
