"""The dashboard on every SQL store (SQLite, PostgreSQL, ClickHouse): the same requests
give the same pages, whichever dialect answers them — filters, chart buckets, top
values, a user's traits, the store's size, and the live tail read from the store."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest

from eventrouter.admin import explorer
from eventrouter.store.query import EventFilter, EventStore
from tests.admin_support import live_ids, open_tail, receive_until, sign_in
from tests.helpers import ADMIN_TOKEN, LiveServer, make_config
from tests.queue_support import unique
from tests.store_support import STORES, store_of, store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Whole minutes: one bucket per event however the buckets of a 1-hour range are cut.
NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dataset() -> list[dict]:
    batch = []
    for i in range(12):  # one a minute, 5..16 minutes ago
        batch.append(
            {
                "type": "track",
                "event": "Viewed" if i % 3 else "Bought",
                "userId": "u-a" if i % 2 else "u-b",
                "messageId": f"v-{i:02d}",
                "timestamp": iso(NOW - timedelta(minutes=5 + i)),
                "properties": {"plan": "pro" if i % 4 else "free", "n": i},
            }
        )
    batch += [
        {
            "type": "identify",
            "userId": "u-a",
            "messageId": "id-1",
            "timestamp": iso(NOW - timedelta(minutes=30)),
            "traits": {"name": "First", "email": "a@example.com"},
        },
        {
            "type": "identify",
            "userId": "u-a",
            "messageId": "id-2",
            "timestamp": iso(NOW - timedelta(minutes=20)),
            "traits": {"name": "Second", "seats": 3},
        },
    ]
    return batch


@pytest.fixture(scope="module", params=STORES)
def server(request, tmp_path_factory) -> Iterator[LiveServer]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    with store_sink(request.param, tmp_path) as sink:
        server = LiveServer(make_config(tmp_path, {"sinks": {"store": sink}})).start()
        try:
            response = server.post("/v1/batch", {"batch": dataset()})
            assert response.status_code == 200, response.text
            yield server
        finally:
            server.stop()


def get(server: LiveServer, path: str, **params) -> str:
    response = server.client.get(path, params=params, headers=BEARER)
    assert response.status_code == 200, response.text
    return response.text


def test_explorer_filters(server):
    html = get(server, "/admin/events", event="Viewed", **{"properties.plan": "pro"})
    ids = re.findall(r'data-message-id="([^"]+)"', html)
    assert ids == ["v-01", "v-02", "v-05", "v-07", "v-10", "v-11"]


def test_chart_counts_per_minute(server):
    html = get(server, "/admin/chart", range="1h", event="Viewed")
    counts = [int(n) for n in re.findall(r'data-count="(\d+)"', html)]
    assert 'data-total="8"' in html
    assert sorted(counts, reverse=True)[:9] == [1] * 8 + [0]  # one a minute, no merging
    everything = get(server, "/admin/chart", range="all")
    assert 'data-total="14"' in everything


def test_top_values(server):
    html = get(server, "/admin/breakdown", range="1h", dimension="properties.plan")
    rows = re.findall(r'>([^<>]+)</a></td>.*?<td class="count">(\d+)</td>', html, re.S)
    assert rows == [("pro", "9"), ("free", "3")]
    html = get(server, "/admin/breakdown", range="1h")
    rows = re.findall(r'>([^<>]+)</a></td>.*?<td class="count">(\d+)</td>', html, re.S)
    assert rows == [("Viewed", "8"), ("Bought", "4")]
    names = get(server, "/admin/event-names")
    assert re.findall(r'<option value="([^"]+)">', names) == ["Viewed", "Bought"]


def test_user_traits_merge_identify_calls(server):
    html = get(server, "/admin/users/u-a")
    traits = dict(re.findall(r"<tr><th>([^<]+)</th><td>(?:<code>)?([^<]*)", html))
    assert traits == {"email": "a@example.com", "name": "Second", "seats": "3"}
    assert re.findall(r'data-message-id="([^"]+)"', html)[:2] == ["v-01", "v-03"]


def test_status_shows_the_store_size(server):
    html = get(server, "/admin/status")
    assert re.search(r'class="events">14<', html)
    size = unescape(re.search(r'class="bytes">([^<]+)<', html).group(1))
    assert re.fullmatch(r"[\d.]+ (B|KB|MB)", size), size


def test_live_tail_reads_new_rows_from_the_store(server):
    cookie = sign_in(server.url)
    with open_tail(server.url, cookie, {"event": "Tailed"}) as ws:
        receive_until(ws, lambda m: "badge live" in m, "the Live badge")
        message_id = unique("tail-")
        body = {"userId": "u-t", "event": "Tailed", "messageId": message_id}
        assert server.post("/v1/track", body).status_code == 200
        message = receive_until(ws, lambda m: message_id in live_ids(m), "the stored event")
        assert live_ids(message) == [message_id]


@pytest.mark.parametrize("kind", STORES)
def test_a_page_of_the_rows_columns_reads_those_alone(kind, tmp_path):
    """The explorer's and the user page's rows read the columns they show
    (``explorer.ROW_COLUMNS``, an opened row fetches the whole event): the same events,
    those columns and no other, times as the API shows them, the same cursor; a column
    the store has not is refused."""
    with store_sink(kind, tmp_path) as sink:
        server = LiveServer(make_config(tmp_path, {"sinks": {"store": sink}})).start()
        try:
            response = server.post("/v1/batch", {"batch": dataset()})
            assert response.status_code == 200, response.text
        finally:
            server.stop()
        store = EventStore(store_of(sink))
        try:
            where = EventFilter(user_id="u-a")
            full = store.query(where, 4)
            rows = store.query(where, 4, None, explorer.ROW_COLUMNS)
            assert [set(e) for e in rows.events] == [set(explorer.ROW_COLUMNS)] * 4
            assert rows.events == [
                {name: e[name] for name in explorer.ROW_COLUMNS} for e in full.events
            ]
            assert rows.next_cursor == full.next_cursor and rows.next_cursor
            later = store.query(where, 4, rows.next_cursor, explorer.ROW_COLUMNS)
            assert [e["message_id"] for e in later.events] == [
                e["message_id"] for e in store.query(where, 4, full.next_cursor).events
            ]
            with pytest.raises(ValueError, match="no such column: nope"):
                store.query(where, 4, None, ["nope"])
        finally:
            store.close()
