"""The dashboard's live tail over a real WebSocket (embedded: fed from the store; queued:
fed from the broker), its filters, pause and resume, who may open it; and the status
page's view of the broker."""

from __future__ import annotations

import amqp.exceptions
import msgspec
import pytest
from kombu import Exchange, Producer

from eventrouter.admin.tail import matches
from eventrouter.store.query import EventFilter, PathCondition
from tests.admin_support import live_ids, open_tail, receive_until, refused_status, sign_in
from tests.helpers import ADMIN_TOKEN, LiveServer, eventually
from tests.queue_support import amqp_env, unique  # noqa: F401 - fixture

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def track(server: LiveServer, event: str, **fields) -> str:
    message_id = unique("m-")
    body = {"userId": "u-live", "event": event, "messageId": message_id, **fields}
    response = server.post("/v1/track", body)
    assert response.status_code == 200, response.text
    return message_id


def is_live(message: str) -> bool:
    return 'id="live-controls"' in message and "badge live" in message


def has(message_id: str):
    return lambda message: message_id in live_ids(message)


def test_new_events_appear_and_earlier_ones_do_not(server):
    before = track(server, "Before")
    cookie = sign_in(server.url)
    with open_tail(server.url, cookie) as ws:
        receive_until(ws, is_live, "the Live badge")
        after = track(server, "After")
        message = receive_until(ws, has(after), "the event posted after connecting")
        assert 'hx-swap-oob="afterbegin"' in message  # prepended to #live-rows
        assert before not in message
        assert "After" in message and "u-live" in message


def test_the_tail_applies_the_filters(server):
    cookie = sign_in(server.url)
    params = {"event": "Only This", "properties.plan": "pro"}
    with open_tail(server.url, cookie, params) as ws:
        receive_until(ws, is_live, "the Live badge")
        other = track(server, "Other", properties={"plan": "pro"})
        free = track(server, "Only This", properties={"plan": "free"})
        wanted = track(server, "Only This", properties={"plan": "pro"})
        message = receive_until(ws, lambda m: bool(live_ids(m)), "a row")
        assert live_ids(message) == [wanted]  # the others were posted first, and skipped
        assert other not in message and free not in message


def test_pause_holds_events_and_resume_shows_them(server):
    cookie = sign_in(server.url)
    with open_tail(server.url, cookie) as ws:
        receive_until(ws, is_live, "the Live badge")
        ws.send(msgspec.json.encode({"action": "pause", "HEADERS": {}}).decode())
        receive_until(ws, lambda m: "badge paused" in m, "the Paused badge")
        held = track(server, "While Paused")
        waiting = receive_until(ws, lambda m: "1 new event waiting" in m, "the held count")
        assert held not in waiting
        ws.send('{"action": "resume"}')
        message = receive_until(ws, has(held), "the held event after resuming")
        assert "While Paused" in message
        receive_until(ws, is_live, "the Live badge again")


def test_only_a_signed_in_page_of_this_origin_may_open_the_tail(server):
    assert refused_status(server.url, cookie=None) == 403
    assert refused_status(server.url, cookie="forged.cookie.value") == 403
    cookie = sign_in(server.url)
    assert refused_status(server.url, cookie, origin="http://evil.example") == 403
    with open_tail(server.url, cookie) as ws:  # the same cookie from our own origin
        receive_until(ws, is_live, "the Live badge")


def test_queued_edge_tails_the_broker(amqp_env, tmp_path):  # noqa: F811
    """No worker runs: the events are only in RabbitMQ, and still appear at once."""
    server = LiveServer(amqp_env.config()).start()
    try:
        cookie = sign_in(server.url)
        with open_tail(server.url, cookie) as ws:
            receive_until(ws, is_live, "the Live badge")
            tail_queue = server.app.tail._feed.queue.name
            assert tail_queue.startswith(f"{amqp_env.prefix}.tail.")
            message_id = track(server, "Via The Broker")
            message = receive_until(ws, has(message_id), "the event, from the broker")
            assert "Via The Broker" in message
        assert amqp_env.stored_ids() == []  # nothing was stored: it came from the broker
        # the hub stops its feed with its last subscriber
        eventually(lambda: server.app.tail._feed is None, "the tail feed stopped")
        # and the broker dropped its queue
        with amqp_env.connection() as connection, pytest.raises(amqp.exceptions.NotFound):
            connection.channel().queue_declare(tail_queue, passive=True)
    finally:
        server.stop()


def test_status_page_shows_queue_depth_and_dead_letters(amqp_env):  # noqa: F811
    server = LiveServer(amqp_env.config()).start()
    try:
        for _ in range(3):
            track(server, "Queued")
        with amqp_env.connection() as connection:
            exchange = Exchange(f"{amqp_env.prefix}.dead", "direct", durable=True)
            Producer(connection.channel()).publish(
                b"not commands",
                exchange=exchange,
                routing_key="local",
                headers={"x-eventrouter-reason": "sink said: disk <full>"},
            )
        page = server.client.get("/admin/status", headers=BEARER)
        assert page.status_code == 200
        row = page.text[page.text.index('data-sink="local"') :].split("</tr>")[0]
        assert 'class="dead">1<' in row
        depth = int(row.split('class="queue">')[1].split("<")[0])
        assert depth >= 1  # 3 events in one to three group commits, no worker to take them
        assert "sink said: disk &lt;full&gt;" in row
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (EventFilter(), True),
        (EventFilter(event="Viewed", type="track"), True),
        (EventFilter(event="Other"), False),
        (EventFilter(user_id="u1", source="web"), True),
        (EventFilter(anonymous_id="a2"), False),
        (EventFilter(paths=[PathCondition("properties", ("plan",), "pro")]), True),
        (EventFilter(paths=[PathCondition("properties", ("seats",), "5")]), True),
        (EventFilter(paths=[PathCondition("properties", ("trial",), "false")]), True),
        (EventFilter(paths=[PathCondition("properties", ("price",), "9.5")]), True),
        (EventFilter(paths=[PathCondition("properties", ("billing", "cycle"), "year")]), True),
        (EventFilter(paths=[PathCondition("properties", ("billing", "x"), "year")]), False),
        (EventFilter(paths=[PathCondition("context", ("page", "path"), "/a")]), True),
        (EventFilter(paths=[PathCondition("traits", ("plan",), "pro")]), False),
    ],
)
def test_live_filters_mean_what_the_store_filters_mean(where, expected):
    event = {
        "type": "track",
        "event": "Viewed",
        "user_id": "u1",
        "anonymous_id": "a1",
        "source": "web",
        "properties": {
            "plan": "pro",
            "seats": 5,
            "trial": False,
            "price": 9.5,
            "billing": {"cycle": "year"},
        },
        "traits": None,
        "context": {"page": {"path": "/a"}},
    }
    assert matches(where, event) is expected
