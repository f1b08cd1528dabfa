"""The admin dashboard through ``falcon.testing``: sign-in, sessions and CSRF, every page
and htmx fragment, filters in the URL, keyset pages, the chart and breakdowns, the user,
status and sources pages, security headers and escaping.

(The same pages in a real browser: tests/browser/test_admin_browser.py.)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import falcon.testing
import pytest

from eventrouter.admin import explorer
from eventrouter.app import create_app
from tests.helpers import ADMIN_TOKEN, make_config

NOW = datetime.now(UTC).replace(microsecond=0)
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
XSS_EVENT = "<img src=x onerror=alert(1)>"
XSS_VALUE = "<script>alert(1)</script>"
XSS_TRAIT = '"><img src=x onerror=alert(2)>'


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def dataset() -> list[dict]:
    """120 Clicked (half pro), 30 Signed Up, identifies for u1, one XSS-laden event,
    and one old event (40 days ago) outside every preset range but "all"."""
    batch = []
    for i in range(120):
        batch.append(
            {
                "type": "track",
                "event": "Clicked",
                "userId": f"u{i % 3}",
                "messageId": f"click-{i:03d}",
                "timestamp": iso(NOW - timedelta(minutes=i)),
                "properties": {"plan": "pro" if i % 2 else "free", "i": i},
            }
        )
    for i in range(30):
        batch.append(
            {
                "type": "track",
                "event": "Signed Up",
                "userId": "u1",
                "messageId": f"signup-{i:02d}",
                "timestamp": iso(NOW - timedelta(hours=2, minutes=i)),
                "properties": {"plan": "pro"},
            }
        )
    batch += [
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "identify-1",
            "timestamp": iso(NOW - timedelta(hours=5)),
            "traits": {"name": "Old Name", "email": "u1@example.com"},
        },
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "identify-2",
            "timestamp": iso(NOW - timedelta(hours=4)),
            "traits": {"name": XSS_TRAIT, "company": "Acme"},
        },
        {
            "type": "track",
            "event": XSS_EVENT,
            "userId": "u-xss",
            "messageId": "xss-1",
            "timestamp": iso(NOW - timedelta(hours=3)),
            "properties": {"plan": XSS_VALUE},
        },
        {
            "type": "track",
            "event": "Ancient",
            "userId": "u-old",
            "messageId": "old-1",
            "timestamp": iso(NOW - timedelta(days=40)),
        },
    ]
    return batch


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    config = make_config(
        tmp_path_factory.mktemp("admin"),
        {
            "sources": [{"name": "web", "write_key": "wk-web"}],
            "server": {"trusted_proxies": ["10.0.0.0/8"]},
        },
    )
    app = create_app(config)
    client = falcon.testing.TestClient(app)
    response = client.simulate_post(
        "/v1/batch", json={"batch": dataset()}, headers={"Authorization": _basic("wk-web")}
    )
    assert response.status_code == 200, response.text
    return app


def _basic(write_key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


@pytest.fixture(scope="module")
def client(app) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(app)


def login_form(client) -> tuple[str, dict[str, str]]:
    """The sign-in form's CSRF token and the cookie that goes with it."""
    response = client.simulate_get("/admin/login")
    assert response.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', response.text).group(1)
    return token, {"eventrouter_login_csrf": response.cookies["eventrouter_login_csrf"].value}


def post_form(client, path: str, fields: dict, **kwargs) -> falcon.testing.Result:
    """POST an HTML form (urlencoded), as a browser submits it."""
    headers = {"Content-Type": "application/x-www-form-urlencoded", **kwargs.pop("headers", {})}
    return client.simulate_post(path, body=urlencode(fields), headers=headers, **kwargs)


def sign_in(client, **kwargs) -> falcon.testing.Result:
    csrf, cookies = login_form(client)
    return post_form(
        client,
        "/admin/login",
        {"csrf_token": csrf, "token": ADMIN_TOKEN, "next": "/admin/events"},
        cookies=cookies,
        **kwargs,
    )


@pytest.fixture(scope="module")
def session(client) -> dict[str, str]:
    """Cookies of a signed-in browser, plus its CSRF token under ``csrf``."""
    response = sign_in(client)
    assert response.status_code == 303
    cookie = response.cookies["eventrouter_session"].value
    page = client.simulate_get("/admin/events", cookies={"eventrouter_session": cookie})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return {"eventrouter_session": cookie, "csrf": csrf}


def get(client, session, path, htmx=False, **params):
    cookies = {"eventrouter_session": session["eventrouter_session"]}
    headers = {"HX-Request": "true"} if htmx else {}
    return client.simulate_get(path, params=params or None, cookies=cookies, headers=headers)


def message_ids(html: str) -> list[str]:
    return [unescape(m) for m in re.findall(r'data-message-id="([^"]+)"', html)]


# -- sign-in, sessions, CSRF -----------------------------------------------------------------
PAGES = [
    "/admin/events",
    "/admin/events/click-000",
    "/admin/chart",
    "/admin/breakdown",
    "/admin/event-names",
    "/admin/condition-row",
    "/admin/live",
    "/admin/users/u1",
    "/admin/status",
    "/admin/sources",
]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_redirects_to_sign_in_without_a_session(client, path):
    response = client.simulate_get(path, params={"event": "Clicked"})
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/admin/login"
    assert parse_qs(location.query)["next"] == [f"{path}?event=Clicked"]


@pytest.mark.parametrize("path", PAGES)
def test_htmx_requests_without_a_session_get_401_and_a_redirect_header(client, path):
    response = client.simulate_get(path, headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/admin/login"


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_a_session_and_a_bearer_token(client, session, path):
    assert get(client, session, path).status_code == 200
    assert client.simulate_get(path, headers=BEARER).status_code == 200


def test_wrong_bearer_token_is_401_not_a_redirect(client):
    response = client.simulate_get("/admin/events", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json["code"] == "unauthorized"


def test_query_api_accepts_the_dashboard_session(client, session):
    assert client.simulate_get("/api/v1/events").status_code == 401
    response = get(client, session, "/api/v1/events", limit="1")
    assert response.status_code == 200
    assert len(response.json["events"]) == 1
    # A character inside the signature, changed: the last two replaced by "xx" can spell
    # the same signature (base64's unused bits; about one session in 800).
    cookie = session["eventrouter_session"]
    tampered = {
        "eventrouter_session": cookie[:-3] + ("A" if cookie[-3] != "A" else "B") + cookie[-2:]
    }
    assert client.simulate_get("/api/v1/events", cookies=tampered).status_code == 401


def test_login_sets_an_httponly_strict_session_cookie(client):
    response = sign_in(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/events"
    cookie = response.cookies["eventrouter_session"]
    assert cookie.http_only
    assert cookie.same_site == "Strict"
    assert not cookie.secure  # plain http on loopback: a Secure cookie would be dropped
    assert cookie.max_age and cookie.max_age > 0


def test_session_cookie_is_secure_behind_https(client):
    direct = sign_in(client, protocol="https")
    assert direct.cookies["eventrouter_session"].secure
    proxied = sign_in(client, headers={"X-Forwarded-Proto": "https"}, remote_addr="10.1.2.3")
    assert proxied.cookies["eventrouter_session"].secure
    # X-Forwarded-Proto from a peer that is not a trusted proxy is not believed
    spoofed = sign_in(client, headers={"X-Forwarded-Proto": "https"}, remote_addr="192.0.2.1")
    assert not spoofed.cookies["eventrouter_session"].secure


def test_wrong_token_shows_the_form_again_with_an_error(client):
    csrf, cookies = login_form(client)
    response = post_form(
        client, "/admin/login", {"csrf_token": csrf, "token": "wrong"}, cookies=cookies
    )
    assert response.status_code == 401
    assert "That admin token is not valid." in response.text
    assert "eventrouter_session" not in response.cookies


def test_login_without_its_csrf_token_is_refused(client):
    _, cookies = login_form(client)
    response = post_form(client, "/admin/login", {"token": ADMIN_TOKEN}, cookies=cookies)
    assert response.status_code == 403
    assert "eventrouter_session" not in response.cookies
    csrf, _ = login_form(client)  # a token without its cookie (another browser's form)
    response = post_form(client, "/admin/login", {"csrf_token": csrf, "token": ADMIN_TOKEN})
    assert response.status_code == 403


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/elsewhere", "/admin/\\evil"]
)
def test_login_never_redirects_off_the_dashboard(client, target):
    csrf, cookies = login_form(client)
    response = post_form(
        client,
        "/admin/login",
        {"csrf_token": csrf, "token": ADMIN_TOKEN, "next": target},
        cookies=cookies,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/events"


def test_login_goes_back_to_the_page_asked_for(client):
    csrf, cookies = login_form(client)
    response = post_form(
        client,
        "/admin/login",
        {"csrf_token": csrf, "token": ADMIN_TOKEN, "next": "/admin/users/u1?x=1"},
        cookies=cookies,
    )
    assert response.headers["location"] == "/admin/users/u1?x=1"


def test_logout_needs_the_csrf_token_and_revokes_that_session_only(client, session):
    # A session of its own: the module's ``session`` must outlive this sign-out.
    mine = sign_in(client).cookies["eventrouter_session"].value
    cookies = {"eventrouter_session": mine}
    page = client.simulate_get("/admin/events", cookies=cookies)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    refused = post_form(client, "/admin/logout", {"csrf_token": "x"}, cookies=cookies)
    assert refused.status_code == 403
    assert "eventrouter_session" not in refused.cookies
    response = post_form(client, "/admin/logout", {"csrf_token": csrf}, cookies=cookies)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login"
    assert response.cookies["eventrouter_session"].value == ""
    assert response.cookies["eventrouter_session"].expires < datetime.now(UTC)
    # a copy of the signed-out cookie is refused from now on (docs/admin.md)...
    assert client.simulate_get("/admin/events", cookies=cookies).status_code == 303
    assert client.simulate_get("/api/v1/events", cookies=cookies).status_code == 401
    # ...and another session of the same token is not affected
    assert get(client, session, "/admin/events").status_code == 200


def test_a_session_of_another_admin_token_is_not_accepted(app, session, tmp_path):
    other_token = {"admin": {"token": "another-token-0123456789abcdef"}}
    other = create_app(make_config(tmp_path, other_token))
    cookies = {"eventrouter_session": session["eventrouter_session"]}
    response = falcon.testing.TestClient(other).simulate_get("/admin/events", cookies=cookies)
    assert response.status_code == 303


# -- security headers, escaping, vendored assets ---------------------------------------------
def test_pages_carry_a_strict_content_security_policy(client, session):
    response = get(client, session, "/admin/events")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    # no inline script anywhere, and nothing loaded from another origin
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", response.text)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", response.text)


@pytest.mark.parametrize(
    "path",
    ["/admin/static/htmx.min.js", "/admin/static/htmx-ext-ws.min.js", "/admin/static/admin.js"],
)
def test_scripts_are_served_by_the_app(client, path):
    response = client.simulate_get(path)
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert len(response.content) > 100


def test_event_data_is_escaped_everywhere(client, session):
    pages = [
        get(client, session, "/admin/events", range="all", user_id="u-xss"),
        get(client, session, "/admin/events/xss-1"),
        get(client, session, "/admin/users/u1"),
        get(client, session, "/admin/users/u-xss"),
        get(client, session, "/admin/breakdown", range="all", dimension="properties.plan"),
        get(client, session, "/admin/breakdown", range="all"),
        get(client, session, "/admin/event-names"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "<img src=x" not in page.text
        assert "<script>alert" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[0].text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1].text
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in pages[2].text


# -- the explorer ----------------------------------------------------------------------------
def test_explorer_lists_events_newest_first_with_the_filters(client, session):
    page = get(client, session, "/admin/events", event="Clicked", **{"properties.plan": "pro"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    ids = message_ids(page.text)
    expected = [f"click-{i:03d}" for i in range(120) if i % 2][: explorer.PAGE_SIZE]
    assert ids == expected
    assert 'value="properties.plan = pro"' in page.text  # the form shows the filter back
    assert 'value="Clicked"' in page.text


def test_explorer_fragment_pushes_the_canonical_url(client, session):
    response = get(
        client, session, "/admin/events", htmx=True, event="Clicked", where="properties.plan = free"
    )
    assert response.status_code == 200
    assert "<html" not in response.text
    assert response.headers["HX-Push-Url"] == "/admin/events?event=Clicked&properties.plan=free"
    assert message_ids(response.text)[0] == "click-000"


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({"user_id": "u-xss"}, ["xss-1"]),
        ({"type": "identify"}, ["identify-2", "identify-1"]),
        ({"source": "web", "event": "Signed Up", "range": "1h"}, []),
        ({"range": "all", "user_id": "u-old"}, ["old-1"]),
        ({"range": "30d", "user_id": "u-old"}, []),
        (
            {"event": "Signed Up", "properties.plan": "pro", "range": "24h"},
            [f"signup-{i:02d}" for i in range(30)],
        ),
    ],
)
def test_explorer_filters(client, session, params, ids):
    page = get(client, session, "/admin/events", **params)
    assert page.status_code == 200
    assert message_ids(page.text) == ids
    if not ids:
        assert "No events match these filters." in page.text


def test_custom_range_reads_since_and_until_as_utc(client, session):
    since = (NOW - timedelta(minutes=10, seconds=30)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (NOW - timedelta(minutes=4, seconds=30)).strftime("%Y-%m-%dT%H:%M:%S")
    page = get(
        client, session, "/admin/events", range="custom", since=since, until=until, event="Clicked"
    )
    assert message_ids(page.text) == [f"click-{i:03d}" for i in range(5, 11)]


def test_keyset_pages_cover_every_event_once(client, session):
    seen: list[str] = []
    query = {"event": "Clicked"}
    for _ in range(5):
        page = get(client, session, "/admin/events", htmx=True, **query)
        seen += message_ids(page.text)
        older = re.search(r'class="older" href="/admin/events\?([^"]+)"', page.text)
        if older is None:
            break
        query = {k: v[0] for k, v in parse_qs(unescape(older.group(1))).items()}
        assert query["event"] == "Clicked" and "cursor" in query
    assert seen == [f"click-{i:03d}" for i in range(120)]
    assert 'class="newest"' in page.text  # a later page links back to the newest


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"range": "forever"}, "range: 'forever' is not one of"),
        ({"where": "plan = pro"}, "where: 'plan' must start with properties."),
        ({"where": "properties.plan"}, "is not PATH = VALUE"),
        ({"where": "properties.p lan = x"}, "path segment 'p lan'"),
        ({"breakdown": "plan"}, "breakdown:"),
        ({"range": "custom", "since": "yesterday"}, "since: 'yesterday' is not an ISO 8601 time"),
        (
            {"range": "custom", "since": "2024-01-02T00:00", "until": "2024-01-01T00:00"},
            "until: must be later than since",
        ),
        ({"colour": "red"}, "colour: unknown parameter"),
    ],
)
def test_bad_filters_are_a_400_naming_the_problem(client, session, params, names):
    for htmx in (False, True):
        response = get(client, session, "/admin/events", htmx=htmx, **params)
        assert response.status_code == 400
        assert names in unescape(response.text)
        assert 'role="alert"' in response.text


def test_sql_metacharacters_in_filters_match_nothing_and_break_nothing(client, session):
    for value in ["' OR 1=1 --", '"; DROP TABLE events; --', "%", "_", "\\"]:
        page = get(client, session, "/admin/events", event=value, range="all")
        assert page.status_code == 200
        assert message_ids(page.text) == []
        page = get(client, session, "/admin/events", range="all", **{"properties.plan": value})
        assert message_ids(page.text) == []
    assert len(message_ids(get(client, session, "/admin/events", range="all").text)) == 50


def test_an_event_expands_to_its_json(client, session):
    fragment = get(client, session, "/admin/events/click-007", htmx=True)
    assert fragment.status_code == 200
    assert fragment.text.startswith("<pre>")
    text = unescape(fragment.text)
    assert '"message_id": "click-007"' in text
    assert '"plan": "pro"' in text
    full = get(client, session, "/admin/events/click-007")
    assert "<html" in full.text and "click-007" in full.text
    missing = get(client, session, "/admin/events/no-such-event")
    assert missing.status_code == 404
    assert "no event &#39;no-such-event&#39;" in missing.text


# -- chart, breakdowns, suggestions ----------------------------------------------------------
def chart_total(response) -> int:
    assert response.status_code == 200, response.text
    return int(re.search(r'data-total="(\d+)"', response.text).group(1))


def bar_counts(response) -> list[int]:
    return [int(n) for n in re.findall(r'data-count="(\d+)"', response.text)]


def test_chart_counts_follow_the_filters(client, session):
    everything = get(client, session, "/admin/chart", htmx=True)
    clicked = get(client, session, "/admin/chart", htmx=True, event="Clicked")
    pro = get(client, session, "/admin/chart", event="Clicked", **{"properties.plan": "pro"})
    assert chart_total(everything) == 120 + 30 + 2 + 1  # the last 24 hours
    assert chart_total(clicked) == 120
    assert chart_total(pro) == 60
    assert sum(bar_counts(pro)) == 60
    assert "<svg" in pro.text and "<rect" in pro.text


def clicked_in_the_last_hour() -> int:
    """The seeded Clicked events (one a minute back from ``NOW``) that the real clock's
    last hour holds: the suite may reach this test minutes after ``NOW``."""
    since = datetime.now(UTC) - timedelta(hours=1)
    return sum(1 for i in range(120) if NOW - timedelta(minutes=i) >= since)


def test_chart_buckets_come_from_the_range(client, session):
    most = clicked_in_the_last_hour()
    hour = get(client, session, "/admin/chart", range="1h", event="Clicked")
    least = clicked_in_the_last_hour()
    assert "one bar per 1 minute" in hour.text
    assert 60 <= len(bar_counts(hour)) <= 61
    assert least <= sum(bar_counts(hour)) == chart_total(hour) <= most
    assert least > 0
    week = get(client, session, "/admin/chart", range="7d")
    assert "one bar per 3 hours" in week.text
    everything = get(client, session, "/admin/chart", range="all")
    assert chart_total(everything) == 154
    assert len(bar_counts(everything)) <= explorer.MAX_BUCKETS + 1


def test_top_events_and_a_property_breakdown(client, session):
    top = get(client, session, "/admin/breakdown", range="all", dimension="event")
    rows = re.findall(
        r'<a href="[^"]+">([^<]+)</a></td>\s*<td class="bar">.*?'
        r'<td class="count">([\d,]+)</td>',
        top.text,
        re.S,
    )
    assert [(unescape(name), int(n)) for name, n in rows] == [
        ("Clicked", 120),
        ("Signed Up", 30),
        (XSS_EVENT, 1),  # ties by value: "<" sorts before "A"
        ("Ancient", 1),
    ]
    plan = get(client, session, "/admin/breakdown", event="Clicked", breakdown="properties.plan")
    assert "By <code>properties.plan</code>" in plan.text
    counts = dict(re.findall(r">(pro|free)</a>.*?<td class=\"count\">(\d+)<", plan.text, re.S))
    assert counts == {"pro": "60", "free": "60"}
    # each value links to the explorer narrowed to it
    assert (
        "/admin/events?event=Clicked&amp;breakdown=properties.plan&amp;properties.plan=pro"
        in plan.text
    )
    assert get(client, session, "/admin/breakdown", dimension="nope").status_code == 400


def test_event_names_are_suggested(client, session):
    names = get(client, session, "/admin/event-names", htmx=True)
    assert names.text.startswith('<datalist id="event-names">')
    assert re.findall(r'<option value="([^"]+)">', names.text)[:2] == ["Clicked", "Signed Up"]


def test_condition_row_fragment(client, session):
    row = get(client, session, "/admin/condition-row", htmx=True)
    assert 'name="where"' in row.text and "<html" not in row.text


# -- user, status, sources, live ---------------------------------------------------------------
def test_user_page_shows_merged_traits_and_timeline(client, session):
    page = get(client, session, "/admin/users/u1")
    assert page.status_code == 200
    traits = dict(
        (unescape(k), unescape(v))
        for k, v in re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", page.text)
    )
    # the later identify's name wins; traits only the first had are kept
    assert traits == {"company": "Acme", "email": "u1@example.com", "name": XSS_TRAIT}
    ids = message_ids(page.text)
    assert len(ids) == 50 and ids[0] == "click-001"
    assert 'class="older"' in page.text
    assert get(client, session, "/admin/users/nobody").status_code == 404


def test_status_page_shows_each_sink_and_the_store(client, session):
    page = get(client, session, "/admin/status")
    assert page.status_code == 200
    row = page.text[page.text.index('data-sink="local"') :].split("</tr>")[0]
    assert '<td class="state state-up">up</td>' in row  # the embedded sink runs here
    assert "<td>sink:local</td>" not in page.text  # not listed again among components
    assert re.search(r'class="events">154<', page.text)
    assert re.search(r'class="bytes">[\d.]+ (KB|MB)<', page.text)


def test_sources_page_shows_a_snippet_per_source(client, session):
    page = get(client, session, "/admin/sources")
    text = unescape(page.text)
    assert 'data-source="web"' in page.text
    assert '"/analytics.js/v1/"' in text and 'a.load("wk-web")' in text
    assert 'a._writeKey="wk-web"' in text


def test_snippet_write_key_cannot_end_the_script(tmp_path):
    config = make_config(tmp_path, {"sources": [{"name": "x", "write_key": "k</script><b>"}]})
    page = falcon.testing.TestClient(create_app(config)).simulate_get(
        "/admin/sources", headers=BEARER
    )
    snippet = unescape(re.search(r'<pre class="snippet"><code>(.*?)</code>', page.text, re.S)[1])
    assert snippet.count("</script>") == 1  # only the snippet's own end tag
    assert '"k\\u003c/script\\u003e\\u003cb\\u003e"' in snippet


def test_live_page_connects_to_its_socket_with_the_filters(client, session):
    page = get(client, session, "/admin/live", event="Clicked", **{"properties.plan": "pro"})
    assert page.status_code == 200
    assert 'ws-connect="/admin/live/ws?event=Clicked&amp;properties.plan=pro"' in page.text
    fragment = get(client, session, "/admin/live", htmx=True, event="Signed Up")
    assert fragment.headers["HX-Push-Url"] == "/admin/live?event=Signed+Up"
    assert "<html" not in fragment.text
