"""The official ``@segment/analytics-next`` in a real headless Chromium, with this server
as its CDN and its API.

A website on its own loopback port embeds Segment's standard snippet and loads the
package's standalone build (``dist/umd/standalone.js``, from the npm registry). The page
sets ``analytics._cdn`` to our server, the one setting the standalone build reads for
its CDN (``lib/parse-cdn``: ``window.analytics._cdn``, else a ``https://`` script URL of
the form ``/analytics.js/v1/...``, else ``https://cdn.segment.com``). From there it
fetches ``/v1/projects/{writeKey}/settings``, whose ``Segment.io`` integration sends the
events back to us. Every request to anything but 127.0.0.1 is aborted and recorded: the
tests fail if analytics-next tried to reach any other host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, Route

from tests.browser_support import SCREENSHOTS, chromium
from tests.cdn_support import Edge, StaticSite
from tests.helpers import HANG_GUARD, LiveServer, eventually, make_config

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

PACKAGE = "@segment/analytics-next@1"
CACHE = Path.home() / ".cache" / "eventrouter-tests" / "analytics-next"
WRITE_KEY = "wk-web"
SOURCES = [{"name": "web", "write_key": WRITE_KEY}]

#: Segment's snippet (5.2.0) as a website pastes it, loading the standalone build from
#: the website itself instead of cdn.segment.com; ``__CDN__`` is our server.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Pricing — analytics-next on eventrouter</title>
<script>
!function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)
if(analytics.invoked)window.console&&console.error&&
console.error("Segment snippet included twice.");
else{analytics.invoked=!0;analytics.methods=["trackSubmit","trackClick","trackLink","trackForm",
"pageview","identify","reset","group","track","ready","alias","debug","page","screen","once",
"off","on","addSourceMiddleware","addIntegrationMiddleware","setAnonymousId",
"addDestinationMiddleware","register"];analytics.factory=function(e){return function(){
if(window[i].initialized)return window[i][e].apply(window[i],arguments);
var n=Array.prototype.slice.call(arguments);
if(["track","screen","alias","group","page","identify"].indexOf(e)>-1){
var c=document.querySelector("link[rel='canonical']");n.push({__t:"bpc",
c:c&&c.getAttribute("href")||void 0,p:location.pathname,u:location.href,s:location.search,
t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);return analytics}};
for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];
analytics[key]=analytics.factory(key)}analytics.load=function(key,n){
var t=document.createElement("script");t.type="text/javascript";t.async=!0;
t.setAttribute("data-global-segment-analytics-key",i);
t.src="/analytics-next/standalone.js";
var r=document.getElementsByTagName("script")[0];r.parentNode.insertBefore(t,r);
analytics._loadOptions=n};analytics._writeKey="__WRITE_KEY__";analytics.SNIPPET_VERSION="5.2.0";
analytics._cdn="__CDN__";
analytics.load("__WRITE_KEY__");
analytics.page("Pricing",{section:"plans"});
analytics.identify("user-next",{plan:"pro",email:"next@example.com"});
analytics.track("Next Event",{plan:"pro",seats:3});
analytics.ready(function(){var s=window.analytics.settings;
document.getElementById("status").textContent="analytics-next "+window.analytics.VERSION+
" read its settings from "+s.cdnURL+" and sends to "+
s.cdnSettings.integrations["Segment.io"].apiHost});
}}();
</script></head>
<body><h1>Pricing</h1><p id="status">loading analytics-next…</p></body></html>
"""


# -- analytics-next from the npm registry ---------------------------------------------------
@pytest.fixture(scope="session")
def analytics_next() -> Path:
    """``package/dist/umd`` of the newest analytics-next 1.x, fetched once with
    ``npm pack`` into ~/.cache/eventrouter-tests/ and reused after that."""
    umd = CACHE / "package" / "dist" / "umd"
    if (umd / "standalone.js").is_file():
        return umd
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is needed once to fetch {PACKAGE} from the npm registry (node 20)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        packed = subprocess.run(
            [npm, "pack", PACKAGE, "--pack-destination", scratch],
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=300,
        )
        tarballs = list(Path(scratch).glob("*.tgz"))
        if packed.returncode != 0 or not tarballs:
            pytest.fail(
                f"`npm pack {PACKAGE}` failed (is the npm registry reachable?):\n"
                f"{packed.stdout}{packed.stderr}"
            )
        with tarfile.open(tarballs[0]) as tar:
            wanted = [
                m
                for m in tar.getmembers()
                if m.name.startswith("package/dist/umd/") or m.name == "package/package.json"
            ]
            tar.extractall(scratch, members=wanted, filter="data")
        os.replace(Path(scratch) / "package", CACHE / "package")
    return umd


def version_of(umd: Path) -> str:
    return json.loads((umd.parent.parent / "package.json").read_text())["version"]


# -- the browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


class Visit:
    """One page in its own browser context: every request it makes is recorded, and any
    to a host other than 127.0.0.1 is aborted (and recorded as such)."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context()
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(HANG_GUARD * 1000)
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.page.route("**/*", self._route)
        self.page.on("request", self._on_request)
        self.page.on("pageerror", lambda error: self.errors.append(f"JS error: {error}"))
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"),
        )

    def _route(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _on_request(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.url}")

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"cdn-{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser) -> Iterator[Visit]:
    visit = Visit(browser)
    yield visit
    visit.close()


@pytest.fixture
def website(tmp_path, analytics_next) -> Iterator[Any]:
    """A website (its own loopback port) that embeds the snippet; ``website(cdn)``
    writes its page for that CDN and returns the page's URL."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "analytics-next").symlink_to(analytics_next, target_is_directory=True)
    site = StaticSite(root).start()

    def page_for(cdn: str) -> str:
        html = PAGE.replace("__CDN__", cdn).replace("__WRITE_KEY__", WRITE_KEY)
        (root / "pricing.html").write_text(html, encoding="utf-8")
        return f"{site.url}/pricing.html"

    yield page_for
    site.stop()


def server_config(tmp_path, **server: Any):
    return make_config(tmp_path / "data", {"sources": SOURCES, "server": server})


# -- what analytics-next sends ---------------------------------------------------------------
def run_page(visit: Visit, url: str, server: LiveServer, name: str) -> dict[str, dict]:
    """Open the page; wait until its three calls are stored; return them by type."""
    visit.page.goto(url)
    visit.page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('analytics-next ')"
    )
    # The sync API runs the route handler only while Python is inside a playwright call:
    # pump it between polls, or the page's requests wait for the poll to end.
    eventually(
        lambda: visit.page.wait_for_timeout(20) or len(server.events()) >= 3,
        "analytics-next's page, identify and track stored",
    )
    visit.shot(name)
    stored = server.events()
    assert sorted(e["type"] for e in stored) == ["identify", "page", "track"], stored
    return {e["type"]: e for e in stored}


def assert_sent_by_analytics_next(events: dict[str, dict], version: str, site: str) -> None:
    track, identify, page = events["track"], events["identify"], events["page"]
    assert track["event"] == "Next Event"
    assert track["properties"] == {"plan": "pro", "seats": 3}
    assert track["user_id"] == "user-next"
    assert identify["user_id"] == "user-next"
    assert identify["traits"] == {"plan": "pro", "email": "next@example.com"}
    assert page["name"] == "Pricing"
    assert page["properties"]["section"] == "plans"
    assert page["properties"]["url"] == f"{site}/pricing.html"
    anonymous = {e["anonymous_id"] for e in events.values()}
    assert len(anonymous) == 1 and None not in anonymous  # one visitor, one anonymousId
    for event in events.values():
        library = event["context"]["library"]
        assert library == {"name": "analytics.js", "version": f"next-{version}"}
        assert event["context"]["page"]["path"] == "/pricing.html"
        assert event["source"] == "web"


def test_analytics_next_loads_its_settings_from_us_and_sends_here(
    tmp_path, visit, website, analytics_next
):
    server = LiveServer(server_config(tmp_path)).start()
    try:
        url = website(server.url)
        events = run_page(visit, url, server, "analytics-next")
        assert_sent_by_analytics_next(events, version_of(analytics_next), url.rsplit("/", 1)[0])
        assert {e["context"]["ip"] for e in events.values()} == {"127.0.0.1"}
        assert visit.page.inner_text("#status").endswith(
            f"read its settings from {server.url} and sends to 127.0.0.1:{server.port}/v1"
        )
    finally:
        server.stop()
    assert f"GET {server.url}/v1/projects/{WRITE_KEY}/settings" in visit.requests
    sent = {r for r in visit.requests if r.startswith(f"POST {server.url}/v1/")}
    assert sent == {f"POST {server.url}/v1/{path}" for path in ("p", "i", "t")}
    assert visit.blocked == [], f"analytics-next tried to leave 127.0.0.1: {visit.blocked}"
    assert visit.errors == []


def test_analytics_next_through_the_nginx_edge(tmp_path, visit, website, analytics_next):
    """The whole topology: the page's CDN is the edge; the settings it caches name the
    edge as apiHost, so the events come back through it to the origin."""
    origin = LiveServer(server_config(tmp_path, trusted_proxies=["127.0.0.1/32"])).start()
    edge = Edge([f"127.0.0.1:{origin.port}"]).start()
    try:
        url = website(edge.url)
        events = run_page(visit, url, origin, "analytics-next-edge")
        assert_sent_by_analytics_next(events, version_of(analytics_next), url.rsplit("/", 1)[0])
        assert visit.page.inner_text("#status").endswith(
            f"read its settings from {edge.url} and sends to 127.0.0.1:{edge.port}/v1"
        )
        log = edge.access_log()
        assert f'GET /v1/projects/{WRITE_KEY}/settings" 200' in log
        assert "cache=MISS" in log
        for path in ("p", "i", "t"):
            assert f'POST /v1/{path}" 200' in log, log
    finally:
        edge.stop()
        origin.stop()
        edge.remove()
    assert f"GET {edge.url}/v1/projects/{WRITE_KEY}/settings" in visit.requests
    assert not [r for r in visit.requests if str(origin.port) in r]  # only the edge
    assert visit.blocked == [], f"analytics-next tried to leave 127.0.0.1: {visit.blocked}"
    assert visit.errors == []
