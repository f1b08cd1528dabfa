"""Hostile event data in the dashboard: every event-derived value stays one query value
in a URL and plain text everywhere else (issue 18, docs/admin.md "Escaping and the
dashboard").

Events go in through the real ingest path of a live server, from two sources that both
use every hostile messageId (uniqueness is per source). Each page is parsed
(``html.parser``) and checked for the exact URLs in its attributes and the exact text of
its elements; no element that event data produced carries an ``hx-*`` attribute or is a
form, input, script, iframe, object, embed, base, meta or link element. The query API
refuses htmx and answers JSON with ``nosniff``, errors included.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import pytest

from eventrouter.admin.render import dashboard_url, make_environment, query_value
from tests.admin_support import SESSION_COOKIE, open_tail, receive_until, sign_in
from tests.helpers import LiveServer
from tests.ingest_support import AUTH, iso, running

#: Dot segments (plain and percent-encoded), URL delimiters, quotes, markup and htmx
#: attribute text. Each is a messageId, an event name, a userId, an anonymousId, a page
#: name, a property (key and value), a trait and a context field.
HOSTILE = [
    "..",
    ".",
    "../../api/v1/events/x1",
    "/",
    "?",
    "#",
    "%2e%2e",
    ".%2E",
    "%2E",
    "a/./b/../c",
    '"',
    "'",
    "<",
    ">",
    "&",
    "&amp;",
    "a b+c=d&e;f",
    '" hx-post="/admin/privacy" hx-trigger="load',
    "' hx-get='/api/v1/events' hx-trigger='load",
    '<form hx-post="/admin/privacy" hx-trigger="load"><input name="action" value="delete"></form>',
    "<script>alert(1)</script><iframe src=/admin/privacy></iframe><base href=/api/>",
]
#: Two sources; the second's name is hostile too (operators choose names, and the row
#: URL carries the source).
SOURCES = [
    {"name": "web", "write_key": "wk-hostile-web-0123456789"},
    {"name": "../s?#\"'<x>&", "write_key": "wk-hostile-odd-0123456789"},
]
FORBIDDEN_TAGS = {"form", "input", "script", "iframe", "object", "embed", "base", "meta", "link"}
ROW_ATTRIBUTES = {"class", "hx-get", "hx-trigger", "hx-target", "hx-swap", "data-message-id",
                  "data-source"}  # fmt: skip
NOW = datetime.now(UTC).replace(microsecond=0)


# -- a small DOM from html.parser ------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


class Node:
    def __init__(self, tag: str, attrs: list[tuple[str, str | None]], parent: Node | None):
        self.tag = tag
        self.attr_list = attrs
        self.attrs = {name: "" if value is None else value for name, value in attrs}
        self.parent = parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def elements(self) -> list[Node]:
        return [child for child in self.children if isinstance(child, Node)]

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def select(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        """Descendants (this node included) by tag, class and exact attribute values."""
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes())
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.select(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", [], None)
        self.open = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.open[-1])
        self.open[-1].children.append(node)
        if tag not in VOID:
            self.open.append(node)

    def handle_startendtag(self, tag, attrs):
        self.open[-1].children.append(Node(tag, attrs, self.open[-1]))

    def handle_endtag(self, tag):
        for i in range(len(self.open) - 1, 0, -1):
            if self.open[i].tag == tag:
                del self.open[i:]
                return

    def handle_data(self, data):
        self.open[-1].children.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def htmx_attributes(node: Node) -> set[str]:
    return {name for name in node.attrs if name.startswith(("hx-", "data-hx-", "ws-"))}


def assert_inert(region: Node, *, allowed: Iterable[Node] = ()) -> None:
    """Nothing in ``region`` (event data) is an element htmx or the browser would act on;
    ``allowed`` are the elements whose own hx-* attributes are the template's (the rows,
    checked by :func:`check_row`)."""
    allowed = [*allowed]
    for node in region.iter():
        if node.tag == "#root":
            continue
        assert node.tag not in FORBIDDEN_TAGS, (node.tag, node.attrs)
        if any(node is a for a in allowed):
            continue
        assert htmx_attributes(node) <= {"hx-disable"}, (node.tag, node.attrs)
        assert len(node.attr_list) == len(node.attrs), ("duplicate attributes", node.attr_list)


def tag_counts(page: Node) -> Counter:
    return Counter(n.tag for n in page.iter() if n.tag in FORBIDDEN_TAGS)


# -- what the URLs must be, spelled out independently of admin.render ------------------------
def q(value: str) -> str:
    return quote(value, safe="")


def row_url(message_id: str, source: str) -> str:
    return f"/admin/event?message_id={q(message_id)}&source={q(source)}"


def user_url(user_id: str) -> str:
    return f"/admin/user?user_id={q(user_id)}"


def assert_dashboard_url(url: str, path: str, params: list[tuple[str, str]]) -> None:
    """``url`` is ``path`` with exactly ``params`` as its query: no dot segment, no
    delimiter of a value leaking into the path, query or fragment."""
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("", "", path, ""), url
    assert parse_qsl(parts.query, keep_blank_values=True) == params, url


# -- the server ------------------------------------------------------------------------------
def track(i: int, value: str, source: int) -> dict:
    return {
        "type": "track",
        "messageId": value,
        "event": value,
        "userId": value,
        "anonymousId": value,
        "timestamp": iso(NOW - timedelta(seconds=i)),
        "properties": {"v": value, value: [value, {"k": value}]},
        "context": {"page": {"path": value, "title": value}},
    }


def page_call(i: int, value: str) -> dict:
    """Anonymous: the row shows the anonymous id instead of a user link."""
    return {
        "type": "page",
        "messageId": f"page-{i}",
        "name": value,
        "anonymousId": value,
        "timestamp": iso(NOW - timedelta(seconds=i)),
        "properties": {"v": value},
    }


def identify(i: int, value: str) -> dict:
    return {
        "type": "identify",
        "messageId": f"identify-{i}",
        "userId": value,
        "timestamp": iso(NOW - timedelta(hours=1, seconds=i)),
        "traits": {"name": value, "nested": {"v": value}},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    with running(tmp_path_factory.mktemp("hostile"), {"sources": SOURCES}) as server:
        for n, source in enumerate(SOURCES):
            batch = [track(i, v, n) for i, v in enumerate(HOSTILE)]
            if n == 0:
                batch += [page_call(i, v) for i, v in enumerate(HOSTILE)]
                batch += [identify(i, v) for i, v in enumerate(HOSTILE)]
            response = server.post("/v1/batch", {"batch": batch}, auth=(source["write_key"], ""))
            assert response.status_code == 200, response.text
        yield server


@pytest.fixture(scope="module")
def cookie(server) -> str:
    return sign_in(server.url)


def get(server: LiveServer, cookie: str, url: str, htmx: bool = False) -> httpx.Response:
    """``url`` as the signed-in browser asks for it (by htmx: with ``HX-Request``)."""
    headers = {"HX-Request": "true"} if htmx else {}
    with httpx.Client(base_url=server.url, cookies={SESSION_COOKIE: cookie}) as client:
        return client.get(url, headers=headers)


def page_of(server: LiveServer, cookie: str, url: str, htmx: bool = False) -> Node:
    response = get(server, cookie, url, htmx)
    assert response.status_code == 200, (url, response.text)
    assert response.headers["content-type"].startswith("text/html")
    return parse(response.text)


def stored(server: LiveServer, message_id: str, source: str) -> dict:
    """The event as the query API lists it (an id of ``..`` cannot be a path segment of
    ``/api/v1/events/{message_id}`` either)."""
    [event] = [e for e in server.events(source=source) if e["message_id"] == message_id]
    return event


def explorer(**params: str) -> str:
    return "/admin/events?" + urlencode(params)


# -- the explorer ----------------------------------------------------------------------------
def check_row(row: Node, message_id: str, source: str, *, inline: bool = False) -> None:
    """One event row: its URL, its text, and nothing active inside it."""
    expected = {"class", "data-message-id", "data-source"}
    assert set(row.attrs) == (expected if inline else ROW_ATTRIBUTES), row.attrs
    assert row.attrs["data-message-id"] == message_id
    assert row.attrs["data-source"] == source
    if not inline:
        assert row.attrs["hx-get"] == row_url(message_id, source)
        assert_dashboard_url(
            row.attrs["hx-get"], "/admin/event", [("message_id", message_id), ("source", source)]
        )
        assert (row.attrs["hx-trigger"], row.attrs["hx-target"], row.attrs["hx-swap"]) == (
            "toggle once",
            "find .json",
            "innerHTML",
        )
    summary = row.one("summary")
    assert "hx-disable" in summary.attrs
    assert row.one("div", "json").attrs == {"class": "json", "hx-disable": ""}
    assert row.one("span", "source").text() == source
    assert_inert(row, allowed=[row])


def test_track_rows_carry_exact_urls_and_text(server, cookie):
    for source in (s["name"] for s in SOURCES):
        page = page_of(server, cookie, explorer(range="all", type="track", source=source))
        rows = page.select("details", "event")
        assert [r.attrs["data-message-id"] for r in rows] == HOSTILE  # newest first
        for row, value in zip(rows, HOSTILE, strict=True):
            check_row(row, value, source)
            assert row.one("span", "name").text() == value
            link = row.one("span", "who").one("a")
            assert link.attrs == {"href": user_url(value)}
            assert_dashboard_url(link.attrs["href"], "/admin/user", [("user_id", value)])
            assert link.text() == value
        assert_inert(page.one("div", id="event-list"), allowed=rows)


def test_anonymous_rows_show_the_anonymous_id_as_text(server, cookie):
    page = page_of(server, cookie, explorer(range="all", type="page"))
    rows = page.select("details", "event")
    assert [r.attrs["data-message-id"] for r in rows] == [f"page-{i}" for i in range(len(HOSTILE))]
    for row, value in zip(rows, HOSTILE, strict=True):
        check_row(row, row.attrs["data-message-id"], "web")
        assert row.one("span", "name").text() == value
        assert row.one("span", "anon").text() == value
        assert row.select("a") == []


def test_event_data_adds_no_active_element_to_a_page(server, cookie):
    """The full explorer page has exactly the forms, inputs, scripts, metas and links of
    an explorer page that shows no event."""
    empty = page_of(server, cookie, explorer(range="all", type="track", user_id="nobody"))
    assert empty.select("details") == []
    for source in (s["name"] for s in SOURCES):
        full = page_of(server, cookie, explorer(range="all", type="track", source=source))
        assert tag_counts(full) == tag_counts(empty)


def test_filter_values_go_into_panel_urls_as_query_values(server, cookie):
    for value in HOSTILE:
        page = page_of(server, cookie, explorer(range="all", event=value))
        pairs = [("range", "all"), ("event", value)]
        chart = page.one("div", id="chart").attrs["hx-get"]
        assert chart == "/admin/chart?" + urlencode(pairs)
        assert_dashboard_url(chart, "/admin/chart", pairs)
        top = page.one("div", id="top-events").attrs["hx-get"]
        assert top == "/admin/breakdown?" + urlencode(pairs) + "&dimension=event"
        assert_dashboard_url(top, "/admin/breakdown", [*pairs, ("dimension", "event")])
        assert page.one("input", name="event").attrs["value"] == value
        assert [r.attrs["data-message-id"] for r in page.select("details", "event")] == [
            value,
            value,
        ]


# -- one event -------------------------------------------------------------------------------
def test_each_row_url_answers_its_own_event_as_inert_text(server, cookie):
    for source in (s["name"] for s in SOURCES):
        for value in HOSTILE:
            fragment = page_of(server, cookie, row_url(value, source), htmx=True)
            [pre] = fragment.elements()
            assert pre.tag == "pre" and pre.attrs == {}
            assert pre.elements() == []  # nothing but text
            shown = json.loads(pre.text())
            assert shown == stored(server, value, source)
            assert (shown["message_id"], shown["source"], shown["event"]) == (value, source, value)


def test_the_full_event_page(server, cookie):
    for value in HOSTILE:
        page = page_of(server, cookie, row_url(value, "web"))
        assert page.one("title").text() == f"Event {value} · eventrouter"
        assert page.one("h1").one("code").text() == value
        box = page.one("div", "json")
        assert box.attrs == {"class": "json", "hx-disable": ""}
        assert json.loads(box.one("pre").text()) == stored(server, value, "web")
        assert_inert(box)


def test_an_id_two_sources_have_needs_the_source(server, cookie):
    response = get(server, cookie, "/admin/event?" + urlencode({"message_id": ".."}), htmx=True)
    assert response.status_code == 409
    assert "ambiguous_message_id" in response.text
    missing = get(server, cookie, "/admin/event", htmx=True)
    assert missing.status_code == 400 and "message_id: required" in missing.text
    # The older path form still answers, for bookmarks (an id without "/" or dots).
    legacy = page_of(server, cookie, "/admin/events/page-3?source=web", htmx=True)
    assert json.loads(legacy.one("pre").text())["message_id"] == "page-3"


# -- the user page ---------------------------------------------------------------------------
def test_user_page_links_and_text(server, cookie):
    for value in HOSTILE:
        page = page_of(server, cookie, user_url(value))
        assert page.one("title").text() == f"User {value} · eventrouter"
        assert page.one("h1").one("code").text() == value
        privacy = page.one("a", "privacy")
        assert privacy.attrs["href"] == f"/admin/privacy?user_id={q(value)}"
        assert_dashboard_url(privacy.attrs["href"], "/admin/privacy", [("user_id", value)])
        [explore] = [a for a in page.select("a") if a.text() == "Open in the explorer"]
        assert explore.attrs["href"] == f"/admin/events?range=all&user_id={q(value)}"
        traits = page.one("table", "traits")
        assert "hx-disable" in traits.attrs
        assert [(tr.one("th").text(), tr.one("td").text()) for tr in traits.select("tr")] == [
            ("name", value),
            ("nested", json.dumps({"v": value}, indent=2, ensure_ascii=False)),
        ]
        assert_inert(traits)
        rows = page.select("details", "event")
        web, odd = (s["name"] for s in SOURCES)
        identified = f"identify-{HOSTILE.index(value)}"
        assert sorted((r.attrs["data-source"], r.attrs["data-message-id"]) for r in rows) == sorted(
            [(web, value), (web, identified), (odd, value)]
        )
        for row in rows:
            check_row(row, row.attrs["data-message-id"], row.attrs["data-source"])


def test_user_page_pager_keeps_the_user_id_a_query_value(server, cookie, monkeypatch):
    from eventrouter.admin import explorer as explorer_module

    monkeypatch.setattr(explorer_module, "PAGE_SIZE", 1)
    page = page_of(server, cookie, user_url("../../api/v1/events/x1"))
    older = page.one("a", "older").attrs["href"]
    parts = urlsplit(older)
    assert parts.path == "/admin/user"
    params = parse_qsl(parts.query)
    assert [name for name, _ in params] == ["user_id", "cursor"]
    assert params[0] == ("user_id", "../../api/v1/events/x1")
    assert older.startswith(f"/admin/user?user_id={q('../../api/v1/events/x1')}&cursor=")
    assert len(page_of(server, cookie, older).select("details", "event")) == 1


# -- breakdowns, suggestions, chart ----------------------------------------------------------
@pytest.mark.parametrize("dimension", ["event", "properties.v", "user_id"])
def test_breakdown_links_put_values_into_query_values(server, cookie, dimension):
    base = [("range", "all"), ("type", "track"), ("source", "web")]
    fragment = page_of(
        server, cookie, "/admin/breakdown?" + urlencode([*base, ("dimension", dimension)]), True
    )
    table = fragment.one("table", "breakdown")
    assert "hx-disable" in table.attrs
    rows = table.select("tr")
    assert len(rows) == 10
    for row in rows:
        link = row.one("td", "value").one("a")
        value = link.text()
        assert value in HOSTILE
        assert link.attrs == {"href": "/admin/events?" + urlencode([*base, (dimension, value)])}
        assert_dashboard_url(link.attrs["href"], "/admin/events", [*base, (dimension, value)])
    assert_inert(table)


def test_event_name_suggestions_are_attribute_values(server, cookie):
    datalist = page_of(server, cookie, "/admin/event-names", True).one("datalist")
    assert set(HOSTILE) <= {o.attrs["value"] for o in datalist.select("option")}
    assert all(o.elements() == [] and o.text() == "" for o in datalist.select("option"))
    assert_inert(datalist)


def test_chart_labels_are_counts_and_times_only(server, cookie):
    label = re.compile(
        r"[\d,]+|\d\d-\d\d \d\d:\d\d|[\d-]+|[\d\- :]+ UTC: [\d,]+|events|time \(UTC\)"
    )
    for value in HOSTILE[:5]:
        url = "/admin/chart?" + urlencode({"range": "all", "event": value})
        chart = page_of(server, cookie, url, htmx=True)
        svg = chart.one("svg")
        assert svg.attrs["aria-label"] == "2 events over time"
        for node in svg.select("text") + svg.select("title"):
            assert label.fullmatch(node.text()), node.text()
        assert_inert(chart)


@pytest.mark.parametrize("by", ["event", "properties.v", "user_id"])
def test_active_users_values_are_text_and_query_values(server, cookie, by):
    url = "/admin/active-users?" + urlencode({"range": "all", "interval": "week", "by": by})
    fragment = page_of(server, cookie, url, True)
    table = fragment.one("table", "breakdown")
    assert "hx-disable" in table.attrs
    links = [a for row in table.one("tbody").select("tr") for a in row.select("a")]
    assert len(links) >= 5
    for link in links:
        value = link.text()
        assert value in HOSTILE
        assert_dashboard_url(link.attrs["href"], "/admin/events", [("range", "all"), (by, value)])
    label = re.compile(r"[\d,]+|[\d-]+|[\d\- :]+ UTC: [\d,]+ users|users|time \(UTC\)")
    svg = fragment.one("svg")
    for node in svg.select("text") + svg.select("title"):
        assert label.fullmatch(node.text()), node.text()
    assert_inert(fragment)


def test_active_users_of_a_hostile_event_name_shows_it_as_text(server, cookie):
    for value in HOSTILE[-5:]:
        url = "/admin/active-users?" + urlencode({"range": "all", "event": value})
        page = page_of(server, cookie, url)
        assert page.one("code", "event-name").text() == value
        assert page.one("input", None, name="event").attrs["value"] == value
        assert_inert(page.one("section", "active-users"))


# -- the live tail ---------------------------------------------------------------------------
def test_live_tail_rows(server, cookie):
    with open_tail(server.url, cookie) as ws:
        receive_until(ws, lambda m: 'id="live-controls"' in m, "the controls")
        batch = [dict(track(i, v, 0), messageId=f"live {v}"[:99]) for i, v in enumerate(HOSTILE)]
        response = server.post("/v1/batch", {"batch": batch}, auth=(SOURCES[0]["write_key"], ""))
        assert response.status_code == 200, response.text
        seen: dict[str, Node] = {}
        while len(seen) < len(HOSTILE):
            message = receive_until(ws, lambda m: 'id="live-rows"' in m, "the rows")
            [box] = parse(message).elements()
            assert (box.tag, box.attrs) == ("div", {"id": "live-rows", "hx-swap-oob": "afterbegin"})
            for row in box.elements():
                seen[row.attrs["data-message-id"]] = row
    for i, value in enumerate(HOSTILE):
        row = seen[f"live {value}"[:99]]
        check_row(row, f"live {value}"[:99], "web", inline=True)
        assert row.one("span", "name").text() == value
        assert row.one("span", "who").one("a").attrs == {"href": user_url(value)}
        shown = json.loads(row.one("div", "json").one("pre").text())
        assert (shown["event"], shown["properties"], shown["context"]["page"]["path"]) == (
            value,
            batch[i]["properties"],
            value,
        )


# -- the helpers themselves ------------------------------------------------------------------
def test_query_value_and_url_encode_every_delimiter():
    for value in HOSTILE:
        assert query_value(value) == q(value)
        assert dashboard_url("/admin/event", message_id=value, source=value) == (
            f"/admin/event?message_id={q(value)}&source={q(value)}"
        )
    assert query_value("..") == ".."  # harmless as a query value; never a path segment
    assert dashboard_url("/admin/user", user_id=None) == "/admin/user"
    for path in ["/api/v1/events", "admin/x", "/admin/../api", "/admin/x?y=1", "/admin/%2e", ""]:
        with pytest.raises(ValueError):
            dashboard_url(path, a="b")


def test_templates_render_with_the_url_global():
    env = make_environment([])
    assert env.globals["url"] is dashboard_url
    strict = env.from_string("{{ v|urlencode }} {{ v|query_value }} {{ {'k': v}|urlencode }}")
    assert strict.render(v="../a b/?#&") == (
        "..%2Fa%20b%2F%3F%23%26 ..%2Fa%20b%2F%3F%23%26 k=..%2Fa%20b%2F%3F%23%26"
    )
    template = env.from_string("<a href=\"{{ url('/admin/user', user_id=v) }}\">{{ v }}</a>")
    assert template.render(v='"><x hx-get=/api>') == (
        '<a href="/admin/user?user_id=%22%3E%3Cx%20hx-get%3D%2Fapi%3E">'
        "&#34;&gt;&lt;x hx-get=/api&gt;</a>"
    )


def test_no_template_or_view_marks_anything_safe():
    """Autoescaping holds only if nothing opts out of it."""
    root = Path(__file__).resolve().parents[2] / "admin"
    for path in [*root.glob("templates/*.html"), *root.glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for needle in ("|safe", "| safe", "Markup", "autoescape false", "autoescape=False"):
            assert needle not in text, (path.name, needle)


# -- the query API -----------------------------------------------------------------------------
API_PATHS = ["/api/v1/events", f"/api/v1/events/{q('#')}?source=web", "/api/v1/events/x1"]


def assert_json_nosniff(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json", response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    json.loads(response.content)


@pytest.mark.parametrize("path", API_PATHS)
@pytest.mark.parametrize("value", ["true", "false", ""])
def test_query_api_refuses_htmx_requests(server, cookie, path, value):
    for credentials in ({"Cookie": f"{SESSION_COOKIE}={cookie}"}, AUTH):
        response = server.client.get(path, headers={**credentials, "HX-Request": value})
        assert response.status_code == 400, response.text
        assert_json_nosniff(response)
        body = response.json()
        assert body["code"] == "htmx_refused"
        assert "HX-Request" in body["message"]
        assert "<" not in response.text
    anonymous = server.client.get(path, headers={"HX-Request": "true"})
    assert anonymous.status_code == 400
    assert_json_nosniff(anonymous)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/v1/events", AUTH, 200),
        (f"/api/v1/events/{q(HOSTILE[-1])}?source=web", AUTH, 200),
        ("/api/v1/events", {}, 401),
        ("/api/v1/events", {"Authorization": "Bearer wrong"}, 401),
        ("/api/v1/events?nope=1", AUTH, 400),
        (f"/api/v1/events/{q('?')}", AUTH, 409),
        ("/api/v1/events/no-such-event", AUTH, 404),
        ("/api/v1/no-such-route", AUTH, 404),
    ],
)
def test_query_api_always_answers_json_with_nosniff(server, path, headers, status):
    response = server.client.get(path, headers=headers)
    assert response.status_code == status, response.text
    assert_json_nosniff(response)


def test_query_api_json_is_not_html_even_for_a_browser(server, cookie):
    """A browser navigating to the API with its session gets JSON it must not sniff."""
    response = server.client.get(
        "/api/v1/events?limit=1",
        headers={
            "Cookie": f"{SESSION_COOKIE}={cookie}",
            "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
        },
    )
    assert response.status_code == 200
    assert_json_nosniff(response)
