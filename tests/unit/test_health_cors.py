"""``GET /health``, CORS for browsers posting to the ingestion endpoints, and the JSON
answers for unknown routes and wrong methods."""

from __future__ import annotations

import pytest

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.health import ComponentHealth
from tests.ingest_support import assert_error, running, the_event, uid

ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with running(tmp_path_factory.mktemp("health-cors")) as server:
        yield server


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    raw = {"server": {"cors_origins": [ORIGIN]}}
    with running(tmp_path_factory.mktemp("cors-restricted"), raw) as server:
        yield server


# -- health -------------------------------------------------------------------------------


def test_health_reports_the_local_sink(shared):
    response = shared.health()  # the components are shown to the admin token
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "ok"
    local = body["components"]["sink:local"]
    assert local["status"] == "up"
    assert local["required"] is True
    assert isinstance(local["detail"], str)
    for component in body["components"].values():
        assert component["status"] in ("up", "down")


def test_health_counts_committed_events(start_server):
    server = start_server()
    batch = [{"type": "track", "userId": "u", "event": "e"} for _ in range(7)]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    stats = server.components()["sink:local"]["stats"]
    assert stats["committed_events"] == 7
    assert stats["commits"] >= 1


def test_health_needs_no_token_for_its_status(shared):
    response = shared.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}  # the components only with the token
    assert response.headers["Cache-Control"] == "no-store"


def test_a_wrong_token_on_health_is_401(shared):
    response = shared.client.get("/health", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert "components" not in response.text


class Component:
    """A plugin that owns one health component."""

    def __init__(self, name, up, required):
        self.state = ComponentHealth(name=name, up=up, required=required, detail="probe")

    @hookimpl
    def eventrouter_health(self):
        return self.state


def test_health_is_503_when_a_required_component_is_down(start_server):
    server = start_server(plugins=[Component("queue:test", up=False, required=True)])
    public = server.client.get("/health")
    assert public.status_code == 503
    assert public.json() == {"status": "down"}  # which one, only to the token
    response = server.health()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["components"]["queue:test"] == {
        "status": "down",
        "required": True,
        "detail": "probe",
    }
    assert body["components"]["sink:local"]["status"] == "up"


def test_health_stays_200_when_an_optional_component_is_down(start_server):
    server = start_server(plugins=[Component("preview", up=False, required=False)])
    response = server.health()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["components"]["preview"]["status"] == "down"
    assert body["components"]["preview"]["required"] is False


# -- CORS ---------------------------------------------------------------------------------


def preflight(server, path="/v1/batch", origin=ORIGIN, headers="authorization,content-type"):
    return server.client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def allowed_headers(response) -> set[str]:
    value = response.headers.get("access-control-allow-headers", "")
    return {h.strip().lower() for h in value.split(",") if h.strip()}


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b", "/v1/t", "/v1/track", "/track"])
def test_preflight_allows_the_browser_to_post(shared, path):
    response = preflight(shared, path)
    assert response.status_code in (200, 204), response.text
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
    assert {"authorization", "content-type"} <= allowed_headers(response)
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert "POST" in methods


def test_preflight_allows_authorization_explicitly(shared):
    # "*" does not cover Authorization in the Fetch standard: it must be named.
    response = preflight(shared, headers="authorization,content-type,content-encoding")
    assert {"authorization", "content-type", "content-encoding"} <= allowed_headers(response)


def test_post_with_origin_gets_allow_origin(shared):
    user = uid()
    response = shared.post(
        "/v1/t", {"userId": user, "event": "from-browser"}, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)
    assert the_event(shared, user_id=user)["event"] == "from-browser"


def test_errors_carry_cors_headers_too(shared):
    # A browser can only read a 400's reason when the error response allows its origin.
    response = shared.post("/v1/t", {"event": "no user"}, headers={"Origin": ORIGIN})
    assert_error(response, 400, "missing_field", "userId")
    assert response.headers["access-control-allow-origin"] in ("*", ORIGIN)


def test_cors_origins_allow_a_listed_origin(restricted):
    user = uid()
    response = restricted.post("/v1/t", {"userId": user, "event": "e"}, headers={"Origin": ORIGIN})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert preflight(restricted).headers["access-control-allow-origin"] == ORIGIN


def test_cors_origins_refuse_another_origin(restricted):
    other = "https://evil.example"
    response = restricted.post("/v1/t", {"userId": uid(), "event": "e"}, headers={"Origin": other})
    assert "access-control-allow-origin" not in response.headers
    response = preflight(restricted, origin=other)
    assert "access-control-allow-origin" not in response.headers


def test_no_origin_no_cors_headers(shared):
    response = shared.post("/v1/t", {"userId": uid(), "event": "e"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


# -- routes and methods -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/nope", "/v1/unknown", "/v2/track", "/v1/track/extra", "/api/v1/nothing"]
)
def test_unknown_route_is_404_json(shared, path):
    for response in (shared.client.get(path), shared.client.post(path, json={})):
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t", "/v1/batch", "/track"])
def test_get_on_an_ingestion_endpoint_is_405_json(shared, path):
    response = shared.client.get(path)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_json(shared, method):
    response = shared.client.request(method, "/v1/track", json={})
    assert_error(response, 405, "method_not_allowed")


def test_post_on_the_query_api_is_405_json(shared):
    response = shared.client.post("/api/v1/events", json={})
    assert_error(response, 405, "method_not_allowed")


def test_post_on_health_is_405_json(shared):
    assert_error(shared.client.post("/health"), 405, "method_not_allowed")
