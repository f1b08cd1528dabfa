"""The data-quality pages in a real headless Chromium: violations and the catalogue of
events whose names, property keys and values are markup, shown as text, with no dialog,
no CSP violation and no script error (the ``tab`` fixture fails the test on any)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.browser.test_admin_browser import (  # noqa: F401 - fixtures
    AUTH,
    SOURCES,
    browser,
    screenshot_dir,
    sign_in,
    tab,
)
from tests.helpers import LiveServer, eventually, make_config
from tests.store_support import store_of

pytestmark = pytest.mark.slow

NASTY = "<img src=x onerror=alert(1)>\"'><script>alert(2)</script>"
NASTY_KEY = "<img src=x onerror=alert(3)>"
PLAN = """
on_violation = "drop"
unplanned = "violation"

[events."Order Completed"]
type = "object"
required = ["total"]
properties.total = { type = "number" }
"""


@pytest.fixture
def quality_server(tmp_path) -> Iterator[LiveServer]:
    plan = tmp_path / "web.toml"
    plan.write_text(PLAN)
    raw = {
        "sources": SOURCES,
        "plugins": {
            "options": {
                "quality": {"plans": {"web": str(plan)}, "catalogue": True, "flush": "50ms"}
            }
        },
    }
    server = LiveServer(make_config(tmp_path, raw)).start()
    server.tmp_path = tmp_path
    try:
        yield server
    finally:
        server.stop()


def flushed(server: LiveServer) -> None:
    tables = store_of(
        {"type": "sqlite", "url": f"sqlite:///{server.tmp_path}/events.db"}
    ).quality_tables()
    try:
        eventually(
            lambda: tables.violations(None, None) and tables.catalogue(None, "order"),
            "the counts were flushed",
        )
    finally:
        tables.close()


def test_violations_and_catalogue_show_hostile_values_as_text(quality_server, tab):  # noqa: F811
    server = quality_server
    events = [
        # Unplanned: its name is the violation's entry.
        {"type": "track", "userId": "u1", "event": NASTY, "properties": {NASTY_KEY: NASTY}},
        # Breaks the plan at properties.total, with a hostile payload.
        {
            "type": "track",
            "userId": "u2",
            "event": "Order Completed",
            "properties": {"total": NASTY, NASTY_KEY: 1},
        },
        {"type": "track", "userId": "u3", "event": "Order Completed", "properties": {"total": 5}},
    ]
    response = server.post("/v1/batch", {"batch": events}, auth=AUTH)
    assert response.status_code == 200, response.text
    flushed(server)

    page = tab.page
    sign_in(tab, server.url, "/admin/violations")
    tab.shot("violations")
    sections = page.locator("section.violation")
    expect(sections).to_have_count(2)
    names = page.locator("section.violation .entry-name").all_text_contents()
    assert sorted(names) == sorted([NASTY, "Order Completed"])
    paths = page.locator(".violation-path").all_text_contents()
    assert sorted(paths) == ["event", "properties.total"]
    rules = page.locator(".violation-rule").all_text_contents()
    assert sorted(rules) == ["type", "unplanned"]
    examples = " ".join(page.locator("pre.example").all_text_contents())
    # The payload as the client sent it (JSON text), shown as text, not as markup.
    assert json.dumps(NASTY)[1:-1] in examples and NASTY_KEY in examples
    assert page.locator("#violations img, #violations script").count() == 0
    dropped = page.locator("table.dropped tbody tr")
    expect(dropped).to_have_count(2)

    # The explorer links to the catalogue; search finds the hostile name.
    page.goto(server.url + "/admin/events")
    page.get_by_role("link", name="the event catalogue").click()
    expect(page).to_have_url(server.url + "/admin/catalogue")
    tab.shot("catalogue")
    page.locator("input[name=q]").fill("<IMG")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/admin/catalogue\?q=%3CIMG"))
    entries = page.locator("section.catalogue-entry")
    expect(entries).to_have_count(1)
    assert entries.locator(".entry-name").text_content() == NASTY
    assert NASTY_KEY in entries.locator("table.catalogue-paths code").all_text_contents()
    assert page.locator("#catalogue img, #catalogue script").count() == 0
    tab.shot("catalogue-search")

    page.goto(server.url + "/admin/catalogue?q=" + quote("order"))
    (entry,) = page.locator("section.catalogue-entry").all()
    assert entry.locator(".entry-name").text_content() == "Order Completed"
    rows = entry.locator("table.catalogue-paths tbody tr").all_text_contents()
    total = next(r for r in rows if r.startswith("total"))
    # Seen twice: once a string (dropped), once an integer; each half of it.
    assert "integer 50%" in total and "string 50%" in total
