"""Conditions on JSON paths (``properties.plan=pro``) in the query API, on every SQL
store: the same requests, the same rows, whichever dialect answers them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import LiveServer, make_config
from tests.ingest_support import AUTH
from tests.store_support import STORES, store_sink

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

EVENTS = [
    ("e-pro", {"plan": "pro", "total": 42.5, "trial": False, "seats": 5}, "/pricing"),
    ("e-free", {"plan": "free", "total": 0, "trial": True, "seats": 1}, "/home"),
    ("e-nested", {"plan": "pro", "billing": {"cycle": "yearly"}, "seats": 50}, "/pricing"),
    ("e-quote", {"plan": 'it\'s "odd"; DROP TABLE events; --'}, "/x"),
]


@pytest.fixture(scope="module", params=STORES)
def store(request, tmp_path_factory) -> Iterator[LiveServer]:
    """A server in embedded mode on one store, holding EVENTS (user ``u-paths``)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    with store_sink(request.param, tmp_path) as sink:
        server = LiveServer(make_config(tmp_path, {"sinks": {"store": sink}})).start()
        try:
            for message_id, properties, path in EVENTS:
                body = {
                    "userId": "u-paths",
                    "event": "Viewed",
                    "messageId": message_id,
                    "properties": properties,
                    "context": {"page": {"path": path}},
                }
                assert server.post("/v1/track", body).status_code == 200
            identify = {"userId": "u-paths", "messageId": "i-1", "traits": {"email": "a@b.c"}}
            assert server.post("/v1/identify", identify).status_code == 200
            yield server
        finally:
            server.stop()


def found(server: LiveServer, **params: str) -> set[str]:
    response = server.client.get("/api/v1/events", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return {event["message_id"] for event in response.json()["events"]}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"properties.plan": "pro"}, {"e-pro", "e-nested"}),
        ({"properties.plan": "free"}, {"e-free"}),
        ({"properties.plan": "enterprise"}, set()),
        ({"properties.total": "42.5"}, {"e-pro"}),
        ({"properties.seats": "50"}, {"e-nested"}),
        ({"properties.trial": "true"}, {"e-free"}),
        ({"properties.trial": "false"}, {"e-pro"}),
        ({"properties.billing.cycle": "yearly"}, {"e-nested"}),
        ({"context.page.path": "/pricing"}, {"e-pro", "e-nested"}),
        ({"properties.plan": "pro", "context.page.path": "/pricing"}, {"e-pro", "e-nested"}),
        ({"properties.plan": "pro", "properties.seats": "5"}, {"e-pro"}),
        ({"traits.email": "a@b.c"}, {"i-1"}),
        ({"properties.plan": "pro", "type": "identify"}, set()),
        ({"properties.missing": "x"}, set()),
    ],
)
def test_path_conditions_select_the_same_rows_on_every_store(store, params, expected):
    assert found(store, **params) == expected


def test_sql_in_a_value_is_only_a_value(store):
    value = 'it\'s "odd"; DROP TABLE events; --'
    assert found(store, **{"properties.plan": value}) == {"e-quote"}
    assert found(store, **{"properties.plan": "x' OR '1'='1"}) == set()
    assert len(found(store)) == len(EVENTS) + 1  # nothing was dropped


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("properties.plan'--", "properties.plan'--: path segment \"plan'--\""),
        ("properties.a b", "properties.a b: path segment 'a b'"),
        ("properties..x", "properties..x: path segment ''"),
        ("properties.", "properties.: write properties.KEY"),
        ("secrets.plan", "secrets.plan: unknown parameter"),
    ],
)
def test_a_malformed_path_is_400_naming_it(store, name, message):
    response = store.client.get("/api/v1/events", params={name: "x"}, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_param"
    assert message in response.json()["message"]


def test_a_blank_condition_is_no_condition(store):
    assert found(store, **{"properties.plan": ""}) == found(store)


def test_too_many_conditions_is_400(store):
    params = {f"properties.k{i}": "v" for i in range(11)}
    response = store.client.get("/api/v1/events", params=params, headers=AUTH)
    assert response.status_code == 400
    assert "at most 10 path conditions" in response.json()["message"]
