"""The funnel and retention pages in a real Chromium: the form updates the results and the
URL (htmx), a shared URL shows the same result, hostile event names and property values
stay text (no dialog, no script; the ``tab`` fixture fails on either or a CSP
violation). Screenshots go to tests/artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from playwright.sync_api import expect

from tests.browser.test_admin_browser import (  # noqa: F401 - fixtures
    AUTH,
    SOURCES,
    browser,
    query_of,
    screenshot_dir,
    sign_in,
    tab,
)
from tests.helpers import LiveServer, make_config

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

HOSTILE = '"><img src=x onerror=alert(1)>{{7*7}}\u2028'
PLAN = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    """The embedded default with three users through Viewed → HOSTILE → Bought, one day
    back: u0 all the way, u1 two steps, u2 one; u0 and u1 come back the next day."""
    tmp_path = tmp_path_factory.mktemp("analysis")
    server = LiveServer(make_config(tmp_path, {"sources": SOURCES})).start()
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start -= timedelta(days=2)
    rows = [
        ("u0", "Viewed", 0, PLAN),
        ("u0", HOSTILE, 200, None),
        ("u0", "Bought", 500, None),
        ("u1", "Viewed", 10, "free"),
        ("u1", HOSTILE, 70, None),
        ("u2", "Viewed", 20, "free"),
        ("u0", "Viewed", 86400, None),
        ("u1", "Viewed", 86400 + 60, None),
    ]
    batch = [
        {
            "type": "track",
            "event": event,
            "userId": user,
            "messageId": f"a-{i}",
            "timestamp": (start + timedelta(hours=9, seconds=offset)).isoformat(),
            "properties": {"plan": plan} if plan else {},
        }
        for i, (user, event, offset, plan) in enumerate(rows)
    ]
    response = server.post("/v1/batch", {"batch": batch}, auth=AUTH)
    assert response.status_code == 200, response.text
    yield server
    server.stop()


def test_a_funnel_from_the_form_and_from_its_url(tab, server):  # noqa: F811 - the tab fixture
    page = tab.page
    sign_in(tab, server.url, "/admin/funnels")
    steps = page.locator("input[name=step]")
    steps.nth(0).fill("Viewed")
    steps.nth(1).fill(HOSTILE)
    steps.nth(2).fill("Bought")
    page.locator("input[name=window]").fill("1h")
    page.locator("input[name=by]").fill("properties.plan")
    page.get_by_role("button", name="Show funnel").click()
    table = page.locator("table.funnel-steps")
    expect(table.locator("td.users")).to_have_text(["3", "2", "1"])
    expect(table.locator("td.median")).to_have_text(["", "2 min 10 s", "5 min"])
    expect(table.locator("td.event").nth(1)).to_have_text(HOSTILE.strip("\u2028"))
    expect(page.locator("svg text.step-label").nth(1)).to_contain_text('"><img src=x')
    expect(page.locator("table.funnel-breakdown td.value")).to_have_text(["free", PLAN])
    assert page.locator("img[src=x]").count() == 0
    query = query_of(page.url)  # the form's state, pushed into the address bar
    assert query["step"] == ["Viewed", HOSTILE, "Bought"]
    assert (query["window"], query["by"]) == (["1h"], ["properties.plan"])
    tab.shot("funnel")
    shared = page.url
    page.goto(server.url + "/admin/funnels")
    page.goto(shared)  # a shared link: the same result, the form filled in
    expect(table.locator("td.users")).to_have_text(["3", "2", "1"])
    expect(page.locator("input[name=step]").nth(1)).to_have_value(HOSTILE)
    tab.shot("shared")


def test_a_bad_funnel_parameter_is_shown_in_the_page(tab, server):  # noqa: F811 - the tab fixture
    page = tab.page
    sign_in(tab, server.url, "/admin/funnels?" + urlencode({"step": HOSTILE}))
    expect(page.locator("div.error")).to_contain_text("step: give 2 to 5 steps, not 1")
    expect(page.locator("input[name=step]").first).to_have_value(HOSTILE)
    tab.shot("error")


def test_a_retention_table_from_its_url_and_from_the_form(tab, server):  # noqa: F811 - the tab fixture
    page = tab.page
    params = {"range": "30d", "first": "Viewed", "returning": "Viewed", "period": "day"}
    sign_in(tab, server.url, "/admin/retention?" + urlencode(params))
    cohort = page.locator("table.cohorts tbody tr").first
    expect(cohort.locator("td.size")).to_have_text("3")
    expect(cohort.locator("td.num").nth(1)).to_contain_text("100.0 %")
    expect(cohort.locator("td.num").nth(2)).to_contain_text("66.7 %")
    tab.shot("retention")
    page.locator("input[name=first]").fill(HOSTILE)
    page.locator("select[name=period]").select_option("week")
    page.get_by_role("button", name="Show retention").click()
    expect(page.locator("section.retention .caption .event").first).to_have_text(
        HOSTILE.strip("\u2028")
    )
    assert query_of(page.url)["first"] == [HOSTILE]
    assert query_of(page.url)["period"] == ["week"]
    expect(page.locator("table.cohorts td.size")).to_have_text(["2"])
    tab.shot("retention-hostile")
