"""Funnels and retention (eventrouter.store.analysis) on every SQL store: small
hand-computed data sets, the same answers from SQLite, PostgreSQL and ClickHouse, and
the pages ``/admin/funnels`` and ``/admin/retention`` answering them over HTTP.

Times are relative to today (UTC), days back, so the data stays in ``range=30d``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import true

from eventrouter.store.analysis import Step, funnel, period_start, retention
from eventrouter.store.query import EventStore, PathCondition
from tests.helpers import ADMIN_BEARER, LiveServer, make_config
from tests.store_support import STORES, store_of, store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
#: The funnel's users all enter at T (five days back, 10:00 UTC).
T = TODAY - timedelta(days=5) + timedelta(hours=10)
#: Retention's first day (six days back).
D = TODAY - timedelta(days=6)
#: A Monday 16 to 22 days back (its week and the next two are over).
W = datetime.fromtimestamp(period_start(int((TODAY - timedelta(days=16)).timestamp()), "week"), UTC)
HOSTILE = '"><svg onload=alert(1)>{{7*7}}'

# (user_id, anonymous_id, event, seconds after T, properties)
FUNNEL_EVENTS: list[tuple[str | None, str | None, str, float, dict[str, Any]]] = [
    # u1: the whole funnel.
    ("u1", "a1", "Viewed", 0, {"plan": "pro"}),
    ("u1", "a1", "Added", 60, {"color": "red"}),
    ("u1", "a1", "Bought", 180, {}),
    # u2: two steps.
    ("u2", None, "Viewed", 0, {"plan": "free"}),
    ("u2", None, "Added", 120, {"color": "blue"}),
    # u3: out of order: Added before the entry, Bought before the Added that counts.
    ("u3", None, "Added", -60, {"color": "blue"}),
    ("u3", None, "Viewed", 0, {"plan": "pro"}),
    ("u3", None, "Bought", 30, {}),
    ("u3", None, "Added", 300, {"color": "red"}),
    # u4: step 2 after the one-hour window.
    ("u4", None, "Viewed", 0, {"plan": "free"}),
    ("u4", None, "Added", 4000, {"color": "red"}),
    # u5: repeated events: the entry is the first Viewed, then the earliest of each.
    ("u5", None, "Viewed", 0, {"plan": "pro"}),
    ("u5", None, "Viewed", 100, {"plan": "free"}),
    ("u5", None, "Added", 200, {"color": "blue"}),
    ("u5", None, "Added", 250, {"color": "red"}),
    ("u5", None, "Bought", 400, {}),
    # a6: an anonymous id only.
    (None, "a6", "Viewed", 0, {}),
    (None, "a6", "Added", 90, {"color": "red"}),
    (None, "a6", "Bought", 100, {}),
    # u7: a tie: Added in the same second as the entry is not later.
    ("u7", None, "Viewed", 0, {"plan": "enterprise"}),
    ("u7", None, "Added", 0, {"color": "red"}),
    # a8 then u8: an anonymous visit and a signed-in one are two users (no stitching).
    (None, "a8", "Viewed", 0, {}),
    ("u8", "a8", "Added", 30, {"color": "red"}),
    # Neither id: left out.
    (None, None, "Viewed", 0, {}),
    # e1: a step exactly at the window's end counts; e2: an anonymous id only, its step
    # a second past the window's end; e3: a step in the next second counts.
    ("e1", None, "Edge Entered", 0, {}),
    ("e1", None, "Edge Reached", 3600, {}),
    (None, "e2", "Edge Entered", 100, {}),
    (None, "e2", "Edge Reached", 3701, {}),
    ("e3", None, "Edge Entered", 200, {}),
    ("e3", None, "Edge Reached", 201, {}),
    # f1: a step 999.7 ms into the window's last second is in that second (SQLite's
    # strftime('%s') once rounded it into the next).
    ("f1", None, "Frac Entered", 400, {}),
    ("f1", None, "Frac Reached", 4000.9997, {}),
]

# (user_id, anonymous_id, event, time)
RETENTION_EVENTS: list[tuple[str | None, str | None, str, datetime]] = [
    ("r1", None, "Signed Up", D + timedelta(hours=1)),
    ("r1", None, "Returned", D + timedelta(hours=2)),
    ("r1", None, "Returned", D + timedelta(days=1, hours=1)),
    ("r1", None, "Returned", D + timedelta(days=3)),
    ("r2", None, "Returned", D + timedelta(hours=4)),  # before signing up: not period 0
    ("r2", None, "Signed Up", D + timedelta(hours=5)),
    ("r2", None, "Returned", D + timedelta(days=2)),
    ("r3", None, "Signed Up", D + timedelta(days=1, hours=1)),
    ("r3", None, "Signed Up", D + timedelta(days=2)),  # not a cohort of its own
    ("r3", None, "Returned", D + timedelta(days=2, hours=5)),
    (None, "r4", "Signed Up", D + timedelta(days=1)),
    (None, "r4", "Returned", D + timedelta(days=1, seconds=10)),
    ("r5", None, "Returned", D + timedelta(hours=1)),  # never signed up
    # r7 returns before signing up and after, the same day: period 0.
    ("r7", None, "Returned", D + timedelta(days=2, hours=1)),
    ("r7", None, "Signed Up", D + timedelta(days=2, hours=2)),
    ("r7", None, "Returned", D + timedelta(days=2, hours=3)),
    # r6 returns in the second of their entry, 300 ms before it: times are whole seconds.
    ("r6", None, "Signed Up", D + timedelta(days=3, milliseconds=500)),
    ("r6", None, "Returned", D + timedelta(days=3, milliseconds=200)),
    ("w1", None, "Trial Started", W + timedelta(hours=1)),
    ("w1", None, "Trial Used", W + timedelta(days=7, hours=1)),
    ("w2", None, "Trial Started", W + timedelta(days=6, hours=23)),
    ("w2", None, "Trial Used", W + timedelta(days=6, hours=23, minutes=30)),
    ("w2", None, "Trial Used", W + timedelta(days=15)),
    ("h1", None, HOSTILE, T),
    ("h1", None, "Returned", T + timedelta(seconds=5)),
]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _batch() -> list[dict[str, Any]]:
    batch = []
    for i, (user_id, anonymous_id, event, offset, properties) in enumerate(FUNNEL_EVENTS):
        batch.append((user_id, anonymous_id, event, T + timedelta(seconds=offset), properties, i))
    for i, (user_id, anonymous_id, event, moment) in enumerate(RETENTION_EVENTS):
        batch.append((user_id, anonymous_id, event, moment, {}, 100 + i))
    out = []
    for user_id, anonymous_id, event, moment, properties, i in batch:
        body: dict[str, Any] = {
            "type": "track",
            "event": event,
            "messageId": f"m-{i}",
            "timestamp": _iso(moment),
            "properties": properties,
        }
        if user_id:
            body["userId"] = user_id
        if anonymous_id:
            body["anonymousId"] = anonymous_id
        out.append(body)
    return out


#: PostgreSQL and SQLite read retention per user with their ``event_user`` indexes
#: (``PostgresDialect.retention_statement``, ``SQLiteDialect.retention_statement``),
#: else in the standard SQL: these stores have them.
EVENT_USER = {"postgres-event_user": "postgres", "sqlite-event_user": "sqlite"}
#: With ``unique_users``, the store keeps ``event_users_daily``, from which funnels and
#: retention read the whole days of their range: PostgreSQL with the ``event_user``
#: index and without, SQLite with its ``event_user`` indexes (and then reads each
#: user's later steps alone); SQLite without them keeps none.
DAILY = {
    "sqlite-daily-event_user": "sqlite",
    "postgres-daily": "postgres",
    "postgres-daily-event_user": "postgres",
}
#: With ``rollup_paths`` too, the store keeps ``users_seen`` (each user's values of
#: ``properties.plan`` per event name), from which a breakdown by it reads the value of
#: a user with one (u5's two values of Viewed: its entry event is read).
SEEN = {"postgres-seen": "postgres", "sqlite-seen-event_user": "sqlite", "sqlite-seen": "sqlite"}
VARIANTS = {**EVENT_USER, **DAILY, **SEEN, "sqlite-unique_users": "sqlite"}


@pytest.fixture(scope="module", params=[*STORES, *VARIANTS])
def served(request, tmp_path_factory) -> Iterator[tuple[LiveServer, EventStore, EventStore]]:
    """A server on one store holding both data sets, the store's query layer, and one
    that reads ``events`` alone (no rollup)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    kind = VARIANTS.get(request.param, request.param)
    with store_sink(kind, tmp_path) as sink:
        if request.param.endswith("event_user"):
            sink["indexes"] = ["event", "event_user"]
        if request.param in DAILY or request.param.endswith("unique_users"):
            sink["unique_users"] = True
        if request.param in SEEN:
            sink["unique_users"] = True
            sink["rollup_paths"] = ["properties.plan"]
        server = LiveServer(make_config(tmp_path, {"sinks": {"store": sink}})).start()
        store = EventStore(store_of(sink))
        scanner = EventStore(store_of(sink), use_rollup=False)
        try:
            events = _batch()
            # One event without any id is refused by the edge: the rest go in a batch.
            valid = [e for e in events if "userId" in e or "anonymousId" in e]
            response = server.post("/v1/batch", {"batch": valid})
            assert response.status_code == 200, response.text
            assert len(server.events()) == len(valid)
            yield server, store, scanner
        finally:
            scanner.close()
            store.close()
            server.stop()


def _shape(steps) -> list[tuple[int, float | None]]:
    return [(s.users, s.median_seconds) for s in steps]


SINCE = TODAY - timedelta(days=30)


def test_a_funnel_counts_users_in_order_within_the_window(served):
    _, store, _ = served
    steps = [Step("Viewed"), Step("Added"), Step("Bought")]
    result = funnel(store, steps, 3600, SINCE, None)
    # Entered: u1 u2 u3 u4 u5 a6 u7 a8; Added: u1 60, u2 120, u3 300, u5 200, a6 90;
    # Bought: u1 120, u5 200, a6 10.
    assert _shape(result.steps) == [(8, None), (5, 120), (3, 120)]
    assert [s.from_previous for s in result.steps] == [1.0, 5 / 8, 3 / 5]
    assert result.steps[2].from_first == 3 / 8


def test_a_step_at_the_windows_end_counts_and_one_a_second_later_does_not(served):
    _, store, _ = served
    steps = [Step("Edge Entered"), Step("Edge Reached")]
    assert _shape(funnel(store, steps, 3600, SINCE, None).steps) == [(3, None), (2, 1800.5)]
    assert _shape(funnel(store, steps, 3601, SINCE, None).steps) == [(3, None), (3, 3600)]
    assert _shape(funnel(store, steps, 3599, SINCE, None).steps) == [(3, None), (1, 1)]


def test_a_step_late_in_the_windows_last_second_counts(served):
    _, store, _ = served
    steps = [Step("Frac Entered"), Step("Frac Reached")]
    assert _shape(funnel(store, steps, 3600, SINCE, None).steps) == [(1, None), (1, 3600)]


def test_a_longer_window_lets_a_late_step_count(served):
    _, store, _ = served
    result = funnel(store, [Step("Viewed"), Step("Added")], 7200, SINCE, None)
    assert _shape(result.steps) == [(8, None), (6, 160)]  # u4's 4000 s joins


def test_step_conditions_pick_the_events_that_count(served):
    _, store, _ = served
    red = (PathCondition("properties", ("color",), "red"),)
    steps = [Step("Viewed"), Step("Added", red), Step("Bought")]
    result = funnel(store, steps, 3600, SINCE, None)
    # Added red: u1 60, u3 300, u5 250 (not its blue 200), a6 90; Bought after: u1, u5, a6.
    assert _shape(result.steps) == [(8, None), (4, 170), (3, 120)]


def test_a_condition_on_the_first_step_picks_the_entry(served):
    _, store, _ = served
    pro = (PathCondition("properties", ("plan",), "pro"),)
    steps = [Step("Viewed", pro), Step("Added"), Step("Bought")]
    result = funnel(store, steps, 3600, SINCE, None)
    # u1 (60, 120), u3 (300, -), u5 (200, 200).
    assert _shape(result.steps) == [(3, None), (3, 200), (2, 160)]


def test_a_breakdown_reads_the_entry_event(served, request):
    _, store, _ = served
    steps = [Step("Viewed"), Step("Added"), Step("Bought")]
    sent: list[str] = []
    listen = lambda _c, _cur, statement, *_a: sent.append(statement)  # noqa: E731
    sqlalchemy_event.listen(store.engine, "before_cursor_execute", listen)
    try:
        result = funnel(store, steps, 3600, SINCE, None, by="properties.plan")
    finally:
        sqlalchemy_event.remove(store.engine, "before_cursor_execute", listen)
    rows = {value: [s.users for s in steps] for value, steps in result.breakdown}
    # u5's entry says pro (its second Viewed says free).
    assert rows == {"pro": [3, 3, 2], "free": [2, 1, 0], None: [2, 1, 1], "enterprise": [1, 0, 0]}
    assert result.breakdown[0][0] == "pro"
    # The stores keeping users_seen read the values of the users of one value there.
    read = any("FROM users_seen" in statement for statement in sent)
    assert read is (request.node.callspec.params["served"] in SEEN)


def test_a_range_that_ends_before_the_entry_has_no_users(served):
    _, store, _ = served
    result = funnel(store, [Step("Viewed"), Step("Added")], 3600, SINCE, T)
    assert _shape(result.steps) == [(0, None), (0, None)]
    assert result.steps[1].from_previous is None


def test_retention_by_day(served):
    _, store, _ = served
    result = retention(store, "Signed Up", "Returned", "day", SINCE, None)
    cohorts = {c.start: (c.users, c.returned) for c in result.cohorts}
    # Today is D + 6 days: cohort D sees periods 0..6, cohort D+1 periods 0..5.
    assert cohorts == {
        D: (2, [1, 1, 1, 1, 0, 0, 0, None]),
        D + timedelta(days=1): (2, [1, 1, 0, 0, 0, 0, None, None]),
        D + timedelta(days=2): (1, [1, 0, 0, 0, 0, None, None, None]),
        D + timedelta(days=3): (1, [1, 0, 0, 0, None, None, None, None]),
    }


def test_retention_by_week_and_the_same_event_twice(served):
    _, store, _ = served
    result = retention(store, "Trial Started", "Trial Used", "week", SINCE, None)
    first = next(c for c in result.cohorts if c.start == W)
    # w1: week 1; w2 (Sunday night of week 0): week 0, and day 15 is week 2.
    assert (first.users, first.returned[:3]) == (2, [1, 1, 1])
    same = retention(store, "Trial Started", "Trial Started", "week", SINCE, None)
    assert [(c.users, c.returned[0]) for c in same.cohorts] == [(2, 2)]


def test_retention_reads_per_user_only_with_the_event_user_indexes(served, request):
    """The cases above ran through the per-user statement on the ``event_user`` stores,
    and through the standard SQL on SQLite's and PostgreSQL's defaults."""
    _, store, _ = served
    name = request.node.callspec.params["served"]
    statement = store.dialect.retention_statement(true(), true(), [], 86400, 0, 8)
    if name in EVENT_USER:
        assert statement is not None
    elif name in ("sqlite", "postgres"):
        assert statement is None


#: Ranges whose ends cut days, and the funnel's and retention's events, anywhere: the
#: whole days inside come from ``event_users_daily`` where kept, the partial ones at
#: either end from ``events``.
CUTS = [
    (SINCE, None),
    (T - timedelta(hours=1), None),  # the funnel's whole day partial
    (T + timedelta(seconds=45), None),  # after some entries: later ones enter
    (T - timedelta(days=2, hours=3), T + timedelta(seconds=150)),  # ends mid-funnel
    (D + timedelta(minutes=90), None),  # after r1's sign-up, before r2's
    (D - timedelta(hours=12), D + timedelta(days=2, hours=3)),  # ends mid-day
    (D + timedelta(days=1, minutes=30), TODAY - timedelta(hours=20)),
    (W + timedelta(hours=12), TODAY - timedelta(days=2, hours=-7)),
    (T + timedelta(hours=3), T + timedelta(hours=5)),  # not one whole day
    # Days whose cut-off parts hold no event: read whole from event_users_daily.
    (W - timedelta(hours=12), D + timedelta(days=3, hours=20)),
    (W - timedelta(hours=12), datetime.now(UTC)),
]


@pytest.mark.parametrize("cut", range(len(CUTS)))
def test_any_range_gives_the_answers_events_give(served, request, cut):
    """Funnels and retention over ranges cut anywhere: the same answers as a reader of
    ``events`` alone; the stores that keep ``event_users_daily`` read it."""
    _, store, scanner = served
    since, until = CUTS[cut]
    sent: list[str] = []
    listen = lambda _c, _cur, statement, *_a: sent.append(statement)  # noqa: E731
    sqlalchemy_event.listen(store.engine, "before_cursor_execute", listen)
    try:
        for steps, by in (
            ([Step("Viewed"), Step("Added"), Step("Bought")], None),
            ([Step("Viewed"), Step("Added"), Step("Bought")], "properties.plan"),
            (
                [Step("Viewed"), Step("Added", (PathCondition("properties", ("color",), "red"),))],
                None,
            ),
            ([Step("Edge Entered"), Step("Edge Reached")], None),
        ):
            got = funnel(store, steps, 3600, since, until, by=by)
            assert got == funnel(scanner, steps, 3600, since, until, by=by), (steps, by)
        for first, returning, period in (
            ("Signed Up", "Returned", "day"),
            ("Signed Up", "Returned", "week"),
            ("Trial Started", "Trial Used", "week"),
            ("Trial Started", "Trial Started", "day"),
        ):
            got = retention(store, first, returning, period, since, until)
            assert got == retention(scanner, first, returning, period, since, until)
    finally:
        sqlalchemy_event.remove(store.engine, "before_cursor_execute", listen)
    name = request.node.callspec.params["served"]
    whole_days = until is None or (until - since) > timedelta(days=2)
    read = any("FROM event_users_daily" in s for s in sent)
    assert read is (name in (*DAILY, "postgres-seen", "sqlite-seen-event_user") and whole_days)


def test_a_hostile_event_name_is_a_value(served):
    _, store, _ = served
    result = retention(store, HOSTILE, "Returned", "day", SINCE, None)
    assert [(c.users, c.returned[0]) for c in result.cohorts] == [(1, 1)]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_funnel_page_shows_the_numbers(served):
    server, _, _ = served
    params = [("range", "30d"), ("step", "Viewed"), ("step", "Added"), ("step", "Bought")]
    params += [("window", "1h"), ("where2", "properties.color=red"), ("by", "properties.plan")]
    response = server.client.get("/admin/funnels", params=params, headers=ADMIN_BEARER)
    assert response.status_code == 200, response.text
    text = _text(response.text)
    # Users at each step, with their share of step 1, on the bars: 8, 4 (50 %), 3.
    assert "8 · 100.0 % " in text and "4 · 50.0 % " in text and "3 · 37.5 % " in text
    assert "2 min 50 s" in text  # the median from Viewed to a red Added: 170 s
    assert "enterprise" in text


def test_the_retention_page_shows_the_cohorts(served):
    server, _, _ = served
    params = {"range": "30d", "first": HOSTILE, "returning": "Returned", "period": "day"}
    response = server.client.get("/admin/retention", params=params, headers=ADMIN_BEARER)
    assert response.status_code == 200, response.text
    assert "<svg onload" not in response.text
    assert "&#34;&gt;&lt;svg onload=alert(1)&gt;{{7*7}}" in response.text
    assert "100.0 %" in _text(response.text)


def test_one_user_is_one_user_not_one_users(served):
    server, _, _ = served
    params = [("range", "30d"), ("step", "Viewed"), ("step", "Added")]
    params += [("where1", "properties.plan=enterprise")]  # u7 alone enters
    response = server.client.get("/admin/funnels", params=params, headers=ADMIN_BEARER)
    assert response.status_code == 200, response.text
    assert "1 user entered" in _text(response.text)
    params = {"range": "30d", "interval": "day", "event": HOSTILE}  # h1 alone, on T's day
    response = server.client.get("/admin/active-users", params=params, headers=ADMIN_BEARER)
    assert response.status_code == 200, response.text
    assert f"{T:%Y-%m-%d} 00:00:00 UTC: 1 user</title>" in response.text, response.text
    assert "1 users" not in response.text


def test_an_htmx_request_gets_the_fragment_and_the_canonical_url(served):
    server, _, _ = served
    params = [
        ("step", "Viewed"),
        ("step", ""),
        ("step", "Added"),
        ("where3", "properties.color=red"),
    ]
    headers = {**ADMIN_BEARER, "HX-Request": "true"}
    response = server.client.get("/admin/funnels", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.text.lstrip().startswith('<section class="funnel"')
    assert response.headers["HX-Push-Url"] == (
        "/admin/funnels?range=30d&step=Viewed&step=Added&where2=properties.color%3Dred&window=1d"
    )


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/admin/funnels", [("step", "Viewed")], "step: give 2 to 5 steps, not 1"),
        ("/admin/funnels", [("step", "A"), ("step", "B"), ("window", "1y")], "window: '1y'"),
        ("/admin/retention", {"first": "A", "returning": "B", "period": "hour"}, "period: 'hour'"),
    ],
)
def test_a_bad_parameter_is_400_naming_it(served, path, params, message):
    server, _, _ = served
    response = server.client.get(path, params=params, headers=ADMIN_BEARER)
    assert response.status_code == 400
    assert message in response.text.replace("&#39;", "'")
