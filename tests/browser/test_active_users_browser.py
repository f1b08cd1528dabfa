"""The Active users page in a real headless Chromium: signed in, the chart's axes and
the breakdown table of hostile event names and property values (shown as text, nothing
runs), and the form changing the view through htmx with the state kept in the URL.

Screenshots go to ``tests/artifacts/screenshots/``; the page fails the test on a CSP
violation, a JavaScript error, a dialog or a request off loopback (Tab, from
test_admin_browser.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_admin_browser import AUTH, OFF_LOOPBACK, SOURCES, TIMEOUT_MS, Tab, sign_in
from tests.browser_support import SCREENSHOTS, chromium

pytestmark = pytest.mark.slow

#: Event names and property values as an attacker would send them.
HOSTILE = [
    "<img src=x onerror=alert(1)>",
    '"><img src=x onerror=alert(2)>',
    "<script>alert(3)</script>",
    "{{7*7}}",
    "line\u2028separator",
    "x" * 300,
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with chromium() as browser:
        yield browser


@pytest.fixture
def tab(browser, request) -> Iterator[Tab]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context()
    tab = Tab(context.new_page(), request.node.name, SCREENSHOTS)
    context.route(OFF_LOOPBACK, tab.refuse)
    yield tab
    context.close()
    assert not tab.problems, "the browser reported:\n" + "\n".join(tab.problems)
    assert not tab.dialogs, "a dialog opened:\n" + "\n".join(tab.dialogs)


def test_active_users_page_shows_hostile_values_as_text(tab, start_server):
    server = start_server({"sources": SOURCES})
    now = datetime.now(UTC)
    batch = [
        {
            "type": "track",
            "event": HOSTILE[i % len(HOSTILE)],
            "userId": f"user-{i % 9}",
            "messageId": f"m-{i:03d}",
            "timestamp": (now - timedelta(hours=7 * i)).isoformat(),
            "properties": {"plan": HOSTILE[i % 4]},
        }
        for i in range(24)
    ]
    response = server.post("/v1/batch", {"batch": batch}, auth=AUTH)
    assert response.status_code == 200, response.text

    page = tab.page
    path = "/admin/active-users?range=30d&interval=day&by=event"
    sign_in(tab, server.url, path)
    expect(page.locator("h1")).to_have_text("Active users")
    expect(page.locator(".active-users")).to_have_attribute("data-exact", "true")
    expect(page.locator(".exactness")).to_have_text("exact")
    tab.shot("by-event")

    # The axes: titled, the y axis from 0 on the baseline to a round top.
    labels = page.locator("svg .y-tick").all_text_contents()
    assert labels[0] == "0" and len(labels) >= 2
    assert [int(v) for v in labels] == sorted(int(v) for v in labels)
    expect(page.locator("svg .axis-title")).to_have_text(["users", "time (UTC)"])
    assert page.locator("svg .x-tick").count() >= 3
    # One point per day of the range (30 days back to today), the days without users at 0.
    assert page.locator("svg circle.point").count() == 31
    assert page.locator('svg circle.point[data-count="0"]').count() >= 20

    values = page.locator("table.breakdown td.value").all_text_contents()
    assert sorted(values) == sorted(HOSTILE)
    assert page.locator("[onerror]").count() == 0
    assert page.locator("main script").count() == 0
    assert "49" not in values

    # The form: per week, by property; htmx swaps the results and pushes the URL.
    page.locator("select[name=interval]").select_option("week")
    page.locator("input[name=by]").fill("properties.plan")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.breakdown")).to_have_attribute("data-dimension", "properties.plan")
    expect(page).to_have_url(re.compile(r"interval=week"))
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"range": ["30d"], "interval": ["week"], "by": ["properties.plan"]}
    values = page.locator("table.breakdown td.value").all_text_contents()
    assert sorted(values) == sorted(HOSTILE[:4])
    assert page.locator("[onerror]").count() == 0
    tab.shot("by-plan-weekly")

    # A bad parameter: a 400 naming it, in the page.
    page.locator("select[name=interval]").select_option("month")
    page.locator("input[name=by]").fill("properties.a b")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#active-users")).to_contain_text("by:")
    tab.shot("bad-dimension")
