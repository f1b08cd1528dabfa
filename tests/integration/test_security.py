"""Security checks, as an attacker would try them:

- every ``/admin`` and ``/api/v1`` route (read from the app's router, so a new route is
  covered without touching this file) refuses a request without credentials or with a
  wrong token, and gives away no data doing it;
- every POST form without its CSRF token is a ``403``;
- SQL metacharacters in every filter of the query API and of the dashboard, on SQLite,
  PostgreSQL and ClickHouse: no 5xx, and exactly the rows that match literally;
- XSS payloads stored in events stay inert in a real Chromium on every page that shows
  them, the live tail included;
- writeKeys and the admin token are compared in constant time;
- no password, token or writeKey of the configuration reaches a log line, ``/health``,
  the status page or ``config check``, even when every service is unreachable.
"""

from __future__ import annotations

import hmac
import inspect
import os
import re
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from urllib.parse import quote, urlsplit

import falcon.inspect
import httpx
import pytest
from clickhouse_driver import Client
from playwright.sync_api import Page, expect

from eventrouter.edge import auth as auth_module
from eventrouter.edge import keys as keys_module
from eventrouter.edge.keys import WriteKeys
from eventrouter.sinks.clickhouse_store import JSON_EXTRACT_SQL as CLICKHOUSE_JSON_EXTRACT_SQL
from tests.admin_support import open_tail, refused_status, sign_in
from tests.browser_support import chromium
from tests.helpers import (
    ADMIN_TOKEN,
    HANG_GUARD,
    CommandProcess,
    LiveServer,
    ServeProcess,
    eventually,
    free_port,
    make_config,
    run_eventrouter,
)
from tests.store_support import CLICKHOUSE_ADMIN, STORES, store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRONG_BEARERS = [
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},  # all but the last character
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},  # one character more
    {"Authorization": "Bearer"},
]
#: Every path parameter a route template may have, and a value for it.
PATH_VALUES = {"message_id": "m-alice", "user_id": "alice"}
#: The query of routes that name what they show in it (docs/admin.md, "Escaping and the
#: dashboard").
QUERY_VALUES = {"/admin/event": "?message_id=m-alice&source=web", "/admin/user": "?user_id=alice"}
#: Public by design: the sign-in form, and the vendored scripts and styles.
PUBLIC = {"/admin/login"}


# -- the app's own routes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    # Every route is tried with each wrong token from one address: far past the sign-in
    # throttle, which tests/integration/test_auth_hardening.py checks on its own.
    wide = {"burst": 100_000, "per_minute": 100_000}
    config = make_config(
        tmp_path_factory.mktemp("security"),
        {
            "sources": [{"name": "web", "write_key": "wk-web-0123456789"}],
            "admin": {"throttle": {"client": wide, "global": wide}},
        },
    )
    server = LiveServer(config).start()
    body = {"userId": "alice", "event": "Secret Plan", "messageId": "m-alice"}
    assert server.post("/v1/track", body, auth=("wk-web-0123456789", "")).status_code == 200
    yield server
    server.stop()


def protected_routes(app) -> list[tuple[str, str]]:
    """(method, concrete path) of every admin and query-API route but sign-in."""
    routes = []
    for route in falcon.inspect.inspect_routes(app):
        if not route.path.startswith(("/admin", "/api/v1")) or route.path in PUBLIC:
            continue
        path = re.sub(
            r"\{(\w+)(?::\w+)?\}", lambda m: quote(PATH_VALUES[m.group(1)], safe=""), route.path
        )
        path += QUERY_VALUES.get(route.path, "")
        for method in route.methods:
            if not method.internal and method.method in ("GET", "POST", "WEBSOCKET"):
                routes.append((method.method, path))
    return routes


def test_the_route_list_is_read_from_the_router(server):
    routes = protected_routes(server.app)
    for expected in [
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/events/m-alice"),
        ("GET", "/admin/events"),
        ("GET", "/admin/users/alice"),
        ("POST", "/admin/logout"),
        ("WEBSOCKET", "/admin/live/ws"),
    ]:
        assert expected in routes
    assert ("GET", "/admin/login") not in routes


def request(server: LiveServer, method: str, path: str, **kwargs) -> httpx.Response:
    if method == "POST":
        kwargs.setdefault("data", {"csrf_token": "x"})
    return server.client.request(method, path, follow_redirects=False, **kwargs)


def assert_no_data(response: httpx.Response) -> None:
    assert "Secret Plan" not in response.text
    assert "alice" not in response.text.replace("users%2Falice", "").replace("users/alice", "")


def test_no_credentials_is_refused_everywhere(server):
    """The query API answers 401; a dashboard page sends a browser to sign in (303),
    and its htmx requests get 401 with HX-Redirect (docs/admin.md)."""
    for method, path in protected_routes(server.app):
        if method == "WEBSOCKET":
            assert refused_status(server.url, None) == 403
            continue
        response = request(server, method, path)
        assert_no_data(response)
        if path.startswith("/api/v1"):
            assert response.status_code == 401, (method, path)
            assert response.json()["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            continue
        assert response.status_code == 303, (method, path, response.status_code)
        assert urlsplit(response.headers["Location"]).path == "/admin/login"
        htmx = request(server, method, path, headers={"HX-Request": "true"})
        assert htmx.status_code == 401, (method, path)
        assert htmx.headers["HX-Redirect"] == "/admin/login"
        assert_no_data(htmx)


@pytest.mark.parametrize("wrong", WRONG_BEARERS, ids=["other", "shorter", "longer", "empty"])
def test_a_wrong_token_is_401_everywhere(server, wrong):
    for method, path in protected_routes(server.app):
        if method == "WEBSOCKET":
            with pytest.raises(Exception) as refused, open_tail(server.url, None) as _:
                pass
            assert "403" in str(refused.value)
            continue
        response = request(server, method, path, headers=wrong)
        assert response.status_code == 401, (method, path, response.status_code)
        assert_no_data(response)


def test_a_write_key_or_basic_auth_is_not_an_admin_credential(server):
    for method, path in protected_routes(server.app):
        if method == "WEBSOCKET":
            continue
        for auth in [("wk-web-0123456789", ""), ("admin", ADMIN_TOKEN), (ADMIN_TOKEN, "")]:
            response = request(server, method, path, auth=auth)
            assert response.status_code in (303, 401), (method, path, auth)
            assert_no_data(response)


def test_the_right_token_opens_every_route(server):
    """So that the refusals above are about the token, not a broken route."""
    for method, path in protected_routes(server.app):
        if method == "GET":
            response = request(server, method, path, headers=BEARER)
            assert response.status_code in (200, 303), (path, response.status_code)


# -- CSRF ------------------------------------------------------------------------------------------
def post_routes(server: LiveServer) -> list[str]:
    return [path for method, path in protected_routes(server.app) if method == "POST"]


def test_every_form_without_its_csrf_token_is_403(server):
    cookie = sign_in(server.url)
    paths = post_routes(server)
    assert "/admin/logout" in paths
    for path in paths:
        with httpx.Client(base_url=server.url, cookies={"eventrouter_session": cookie}) as client:
            for form in ({"next": "/admin/events"}, {"csrf_token": ""}, {"csrf_token": "forged"}):
                response = client.post(path, data=form, follow_redirects=False)
                assert response.status_code == 403, (path, form, response.status_code)
                # a refused logout signs nobody out
                assert "eventrouter_session" not in response.cookies
            forged = client.post(
                path, data={"x": "1"}, headers={"X-CSRF-Token": "forged"}, follow_redirects=False
            )
            assert forged.status_code == 403
    # the sign-in form: its double-submit token is checked before the admin token
    with httpx.Client(base_url=server.url) as client:
        client.get("/admin/login")  # the login CSRF cookie
        for form in ({"token": ADMIN_TOKEN}, {"token": ADMIN_TOKEN, "csrf_token": "forged"}):
            response = client.post("/admin/login", data=form, follow_redirects=False)
            assert response.status_code == 403
            assert "eventrouter_session" not in response.cookies


# -- SQL metacharacters on every store ------------------------------------------------------------
METACHARACTERS = [
    "' OR 1=1 --",
    '"; DROP TABLE events; --',
    "\\",
    "%",
    "_",
    "a\x00b",  # PostgreSQL text cannot even hold it
    "ünï💥 «'»",
    "') OR ('1'='1",
    "*/ UNION SELECT 1 --",
]
#: Filters whose column is a plain column: (query parameter, body field).
COLUMN_FILTERS = {
    "event": "event",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "session_id": "sessionId",
}
PATH_FILTERS = ["properties.plan", "traits.plan", "context.page.path"]
ALL_FILTERS = [*COLUMN_FILTERS, *PATH_FILTERS, "type", "source"]


def sql_dataset() -> list[dict]:
    """Two ordinary users, and for each storable metacharacter value one track and one
    identify call that hold it literally in every filterable field."""
    rows = [
        {
            "type": "track",
            "event": "Clicked",
            "userId": "alice",
            "anonymousId": "anon-a",
            "sessionId": "s-a",
            "messageId": "alice-1",
            "properties": {"plan": "pro"},
            "context": {"page": {"path": "/a"}},
        },
        {
            "type": "identify",
            "userId": "bob",
            "anonymousId": "anon-b",
            "messageId": "bob-1",
            "traits": {"plan": "free"},
        },
    ]
    for i, value in enumerate(METACHARACTERS):
        if "\x00" in value:
            continue
        rows.append(
            {
                "type": "track",
                "event": value,
                "userId": value,
                "anonymousId": value,
                "sessionId": value,
                "messageId": f"lit-track-{i}",
                "properties": {"plan": value},
                "context": {"page": {"path": value}},
            }
        )
        rows.append(
            {
                "type": "identify",
                "userId": value,
                "messageId": f"lit-id-{i}",
                "traits": {"plan": value},
            }
        )
    return rows


SQL_DATA = sql_dataset()


def literally_matching(param: str, value: str) -> set[str]:
    def field(row: dict) -> object:
        if param in COLUMN_FILTERS:
            return row.get(COLUMN_FILTERS[param])
        if param in ("type", "source"):
            return row["type"] if param == "type" else "default"
        column, *path = param.split(".")
        node: object = row.get(column)
        for segment in path:
            node = node.get(segment) if isinstance(node, dict) else None
        return node

    return {row["messageId"] for row in SQL_DATA if field(row) == value}


def old_clickhouse_blind_spot(server: LiveServer, param: str, value: str) -> bool:
    """ClickHouse before 19.x (no JSONExtract) cannot read a nested object holding a
    string that ends in a backslash: such a row is not found (docs/admin.md)."""
    if server.kind != "clickhouse" or param.count(".") < 2 or not value.endswith("\\"):
        return False
    client = Client.from_url(CLICKHOUSE_ADMIN)
    try:
        return not client.execute(CLICKHOUSE_JSON_EXTRACT_SQL)[0][0]
    finally:
        client.disconnect()


@pytest.fixture(scope="module", params=STORES)
def store_server(request, tmp_path_factory) -> Iterator[LiveServer]:
    tmp_path = tmp_path_factory.mktemp(f"sql-{request.param}")
    with store_sink(request.param, tmp_path) as sink:
        server = LiveServer(make_config(tmp_path, {"sinks": {"store": sink}})).start()
        try:
            response = server.post("/v1/batch", {"batch": SQL_DATA})
            assert response.status_code == 200, response.text
            server.kind = request.param
            yield server
        finally:
            server.stop()


def test_sql_metacharacters_in_every_filter_match_only_literally(store_server):
    seen_literal = 0
    for value in METACHARACTERS:
        for param in ALL_FILTERS:
            wanted = literally_matching(param, value)
            seen_literal += bool(wanted)
            exact = not old_clickhouse_blind_spot(store_server, param, value)
            where = {param: value}
            admin = {**where, "range": "all"}
            api = store_server.client.get("/api/v1/events", params=where, headers=BEARER)
            assert api.status_code == 200, (param, value, api.text)
            page = store_server.client.get("/admin/events", params=admin, headers=BEARER)
            assert page.status_code == 200, (param, value, page.text)
            chart = store_server.client.get("/admin/chart", params=admin, headers=BEARER)
            assert chart.status_code == 200, (param, value, chart.text)
            breakdown = store_server.client.get(
                "/admin/breakdown", params={**admin, "dimension": "type"}, headers=BEARER
            )
            assert breakdown.status_code == 200, (param, value, breakdown.text)

            found = {
                "api": {e["message_id"] for e in api.json()["events"]},
                "explorer": {
                    unescape(m) for m in re.findall(r'data-message-id="([^"]+)"', page.text)
                },
            }
            counts = {
                "chart": int(re.search(r'data-total="(\d+)"', chart.text).group(1)),
                "breakdown": sum(
                    int(n.replace(",", ""))
                    for n in re.findall(r'<td class="count">([\d,]+)</td>', breakdown.text)
                ),
            }
            for where_found, ids in found.items():
                assert ids <= wanted, (where_found, param, value)  # never a foreign row
                assert ids == wanted or not exact, (where_found, param, value)
            for where_counted, n in counts.items():
                assert n <= len(wanted), (where_counted, param, value)
                assert n == len(wanted) or not exact, (where_counted, param, value)
    assert seen_literal >= 40  # the literal rows were found, not only the empty answers


def test_sql_metacharacters_in_ids_of_one_event_and_one_user(store_server):
    for value in METACHARACTERS:
        one = store_server.client.get(f"/api/v1/events/{quote(value, safe='')}", headers=BEARER)
        assert one.status_code == 404, (value, one.text)
        user = store_server.client.get(f"/admin/users/{quote(value, safe='')}", headers=BEARER)
        if "\x00" in value:
            assert user.status_code == 404
        else:
            assert user.status_code == 200, (value, user.text)
            ids = set(re.findall(r'data-message-id="([^"]+)"', user.text))
            assert ids == literally_matching("user_id", value)
    assert store_server.client.get("/api/v1/events", headers=BEARER).json()["events"]


# -- XSS in a real browser ------------------------------------------------------------------------
XSS = {
    "script": "<script>window.__xss='script';alert('script')</script>",
    "img": "<img src=x onerror=\"window.__xss='img';alert('img')\">",
    "url": "javascript:window.__xss='url';alert('url')",
    "svg": "\"><svg onload=\"window.__xss='svg';alert('svg')\">",
    "attr": "' autofocus onfocus='window.__xss=1;alert(1)' x='",
}
#: Anything a payload could have made: none may exist in the dashboard's DOM.
INJECTED = (
    'img[src="x"], svg[onload], iframe, [onerror], [onload], [onfocus],'
    ' a[href^="javascript:" i], script:not([src])'
)
XSS_USER = XSS["svg"]


def xss_events() -> list[dict]:
    return [
        {
            "type": "track",
            "event": XSS["img"],
            "userId": XSS_USER,
            "messageId": "xss-track",
            "properties": {"plan": XSS["script"], "url": XSS["url"], "note": XSS["attr"]},
        },
        {
            "type": "identify",
            "userId": XSS_USER,
            "messageId": "xss-identify",
            "traits": {"name": XSS["img"], "website": XSS["url"], "bio": XSS["script"]},
        },
        {
            "type": "page",
            "name": XSS["svg"],
            "anonymousId": XSS["attr"],
            "messageId": "xss-page",
            "properties": {"url": XSS["url"]},
        },
    ]


class Watched:
    """A browser page that records every dialog and CSP violation."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.violations: list[str] = []
        page.set_default_timeout(HANG_GUARD * 1000)
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.violations.append(f"JS error: {error}"))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text:
            self.violations.append(message.text)

    def assert_inert(self, where: str) -> None:
        page = self.page
        assert self.dialogs == [], f"{where}: a dialog opened: {self.dialogs}"
        assert page.evaluate("() => window.__xss") is None, where
        injected = page.evaluate(
            "(selector) => [...document.querySelectorAll(selector)].map(e => e.outerHTML)",
            INJECTED,
        )
        assert injected == [], f"{where}: injected elements {injected}"
        assert self.violations == [], f"{where}: {self.violations}"


def test_xss_payloads_are_inert_in_chromium(tmp_path):
    server = LiveServer(make_config(tmp_path)).start()
    try:
        assert server.post("/v1/batch", {"batch": xss_events()}).status_code == 200
        with chromium() as browser:
            context = browser.new_context()
            context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda r: r.abort())
            tab = Watched(context.new_page())
            page = tab.page
            page.goto(f"{server.url}/admin/login")
            page.locator("input[name=token]").fill(ADMIN_TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(page).to_have_url(f"{server.url}/admin/events")

            # the explorer, with the top events and a breakdown by the payload property
            page.goto(f"{server.url}/admin/events?range=all&breakdown=properties.plan")
            expect(page.locator("#event-list details.event")).to_have_count(3)
            expect(page.locator("#top-events table.breakdown")).to_contain_text(XSS["img"])
            expect(page.locator("table.breakdown").last).to_contain_text(XSS["script"])
            expect(page.locator("#event-list")).to_contain_text(XSS_USER)
            for row in page.locator("#event-list details.event summary").all():
                row.click()  # each row's JSON, loaded by htmx into the page
            expect(page.locator("#event-list .json pre")).to_have_count(3)
            expect(page.locator("#event-list .json pre").first).to_contain_text("window.__xss")
            tab.assert_inert("explorer")

            for message_id in ("xss-track", "xss-identify", "xss-page"):
                page.goto(f"{server.url}/admin/events/{message_id}")
                expect(page.locator("pre")).to_contain_text("window.__xss")
                tab.assert_inert(f"event {message_id}")

            page.goto(f"{server.url}/admin/users/{quote(XSS_USER, safe='')}")
            expect(page.locator("body")).to_contain_text(XSS["url"])  # the website trait
            expect(page.locator("body")).to_contain_text(XSS["img"])
            tab.assert_inert("user page")

            page.goto(f"{server.url}/admin/live")
            expect(page.locator("#live-controls .badge")).to_have_text("Live")
            live = dict(xss_events()[0], messageId=f"xss-live-{uuid.uuid4().hex[:8]}")
            assert server.post("/v1/track", live).status_code == 200
            expect(page.locator("#live-rows details.event")).to_have_count(1)
            expect(page.locator("#live-rows")).to_contain_text(XSS["img"])
            tab.assert_inert("live tail")
            context.close()
    finally:
        server.stop()


# -- constant-time comparisons ------------------------------------------------------------------
def test_write_keys_are_looked_up_by_digest_and_compared_in_constant_time():
    keys = WriteKeys([("wk-web-0123456789", "web"), ("ünï-κλειδί", "intl")])
    assert keys.name("wk-web-0123456789") == "web"
    assert keys.name("ünï-κλειδί") == "intl"
    for wrong in [
        "wk-web-0123456788",  # the last character differs
        "wk-web-012345678",  # one shorter
        "wk-web-0123456789 ",  # one longer
        "WK-WEB-0123456789",
        "",
        "ünï-κλειδ",
        "\udcff",  # not even encodable UTF-8
    ]:
        assert keys.name(wrong) is None, wrong
        assert wrong not in keys
    source = inspect.getsource(keys_module)
    assert "hmac.compare_digest" in source and "sha256" in source
    assert "hmac.compare_digest" in inspect.getsource(auth_module.AdminAuth.token_matches)
    assert hmac.compare_digest  # the stdlib's, not a stand-in


def test_the_ingestor_and_the_cdn_origin_use_the_constant_time_lookup(server):
    ingest = inspect.getsource(__import__("eventrouter.edge.ingest", fromlist=["x"]))
    origin = inspect.getsource(__import__("eventrouter.snippet.origin", fromlist=["x"]))
    assert "WriteKeys(" in ingest and "WriteKeys(" in origin
    body = {"userId": "u", "event": "x"}
    for wrong in ["wk-web-0123456788", "wk-web-012345678", "wk-web-01234567890"]:
        response = server.post("/v1/track", body, auth=(wrong, ""))
        assert response.status_code == 401
        assert wrong not in response.text  # the refusal does not echo the key
    assert server.post("/v1/track", body, auth=("wk-web-0123456789", "")).status_code == 200


def test_admin_token_rejects_near_misses():
    auth = auth_module.AdminAuth("s3cret-admin-token")
    assert auth.token_matches("s3cret-admin-token")
    assert auth.token_matches(" s3cret-admin-token\n")  # pasted with whitespace
    for wrong in ["s3cret-admin-tokeN", "s3cret-admin-toke", "s3cret-admin-token!", "", "\udcff"]:
        assert not auth.token_matches(wrong), wrong


# -- secrets never logged ------------------------------------------------------------------------
SECRETS = {
    "amqp": "amqp-pw-7f3a9c",
    "dedup": "dedup-pw-1b2c3d",
    "limits": "limits-pw-4e5f6a",
    "postgres": "pg-pw-9a8b7c",
    "admin": "admin-token-5d6e7f8a9b-0123456789",
    "query": "query-pw-0c1d2e",
}


def secret_config(tmp_path: Path) -> Path:
    """Every kind of secret, each pointing at a port where nothing listens."""
    closed = free_port()
    path = tmp_path / "secrets.toml"
    path.write_text(
        f"""
[server]
log_format = "json"

[admin]
token = "{SECRETS["admin"]}"

[queue]
url = "amqp://guest:{SECRETS["amqp"]}@127.0.0.1:{closed}//"
connect_timeout = "200ms"
confirm_timeout = "500ms"

[dedup]
url = "redis://:{SECRETS["dedup"]}@127.0.0.1:{closed}/0"
timeout = "100ms"

[rate_limits]
url = "redis://127.0.0.1:{closed}/0?password={SECRETS["limits"]}"
timeout = "100ms"
default = {{ events_per_second = 1000 }}

[sinks.pg]
type = "postgres"
url = "postgresql+psycopg://postgres:{SECRETS["postgres"]}@127.0.0.1:{closed}/test"

[sinks.pg2]
type = "postgres"
url = "postgresql+psycopg://postgres@127.0.0.1:{closed}/test?password={SECRETS["query"]}"
""",
        encoding="utf-8",
    )
    return path


def assert_no_secret(text: str, where: str) -> None:
    for name, secret in SECRETS.items():
        assert secret not in text, f"the {name} secret is in {where}:\n{text}"


def test_config_check_shows_no_secret(tmp_path):
    result = run_eventrouter("config", "check", str(secret_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "queue:" in result.stdout and "***" in result.stdout
    assert_no_secret(result.stdout + result.stderr, "config check")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'[queue]\nurl = "http://guest:{SECRETS["amqp"]}@127.0.0.1//"\n'
        f'[dedup]\nurl = "ftp://u:{SECRETS["dedup"]}@h/0"\n',
        encoding="utf-8",
    )
    result = run_eventrouter("config", "check", str(bad))
    assert result.returncode == 2
    assert "queue.url" in result.stderr
    assert_no_secret(result.stdout + result.stderr, "a config error")


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=HANG_GUARD)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.parametrize(
    "suppress,outage",
    [
        # The store is down, so the suppression list was never read: the privacy stage
        # refuses every batch (fails closed) before anything is published.
        (True, "suppression list not refreshed"),
        # Without that stage the batch reaches the publisher, whose broker is down.
        (False, "publish failed"),
    ],
    ids=["suppression-unread", "publish-failed"],
)
def test_serve_with_every_service_down_logs_no_secret(tmp_path, suppress, outage):
    config = secret_config(tmp_path)
    if not suppress:
        config.write_text(config.read_text() + '\n[plugins]\ndisabled = ["suppress"]\n')
    serve = ServeProcess(tmp_path, "--config", str(config), env={"EVENTROUTER_ADMIN_TOKEN": ""})
    try:
        eventually(lambda: _answers(serve.url), "serve answers /health")
        bearer = {"Authorization": f"Bearer {SECRETS['admin']}"}
        public = httpx.get(f"{serve.url}/health", timeout=HANG_GUARD)
        assert set(public.json()) == {"status"}  # no URL at all without the token
        health = httpx.get(f"{serve.url}/health", headers=bearer, timeout=HANG_GUARD)
        assert "***" in health.text  # the URLs are there, without their passwords
        assert_no_secret(health.text, "/health")
        status = httpx.get(f"{serve.url}/admin/status", headers=bearer, timeout=HANG_GUARD)
        assert status.status_code == 200
        assert_no_secret(status.text, "/admin/status")
        body = {"userId": "u", "event": "x"}
        # spooled or refused (503), as the edge decides with the broker down
        answer = httpx.post(f"{serve.url}/v1/track", json=body, timeout=HANG_GUARD)
        assert_no_secret(answer.text, "the answer to a track call")
        if suppress:
            assert answer.status_code == 503
            assert "pipeline stage suppress:store failed" in answer.json()["message"]
        eventually(lambda: outage in serve.log(), f"{outage!r} logged")
        eventually(lambda: "rate limits not applied" in serve.log(), "the limiter's outage logged")
    finally:
        serve.stop()
    assert_no_secret(serve.log(), "serve's log")


def test_worker_with_every_service_down_logs_no_secret(tmp_path):
    config = secret_config(tmp_path)
    worker = CommandProcess(
        ["worker", "--config", str(config)], tmp_path, dict(os.environ), tmp_path / "worker.log"
    )
    try:
        eventually(
            lambda: worker.process.poll() is not None or "reconnecting" in worker.log(),
            "the worker gives up or retries",
        )
    finally:
        worker.stop()
    log = worker.log()
    assert log.strip()
    assert_no_secret(log, "the worker's log")
