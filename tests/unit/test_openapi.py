"""``GET /openapi.json``: the document lists exactly the public routes the app registers,
and its request schemas come from the models. That the live app answers as it says
(schemathesis, generated requests): tests/integration/test_openapi_conformance.py."""

from __future__ import annotations

import re

import falcon.inspect
import pytest

from eventrouter.app import is_ingestion
from tests.helpers import ADMIN_TOKEN
from tests.ingest_support import running

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running(tmp_path_factory.mktemp("openapi")) as server:
        yield server


@pytest.fixture(scope="module")
def document(live) -> dict:
    response = live.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()


def is_public(path: str) -> bool:
    """The routes the document must cover: ingestion, health and the query API."""
    return is_ingestion(path) or path == "/health" or path.startswith("/api/v1/")


def test_openapi_json_is_served_without_auth_and_is_cacheable(live, document):
    response = live.client.get("/openapi.json")
    assert response.headers["content-type"].startswith("application/json")
    assert "public" in response.headers["cache-control"]
    assert document["openapi"].startswith("3.1")
    etag = response.headers["etag"]
    again = live.client.get("/openapi.json", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""


def test_every_public_route_the_app_registers_is_documented_and_nothing_else(live, document):
    registered = {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.method.lower())
        for route in falcon.inspect.inspect_routes(live.app)
        if is_public(route.path)
        for method in route.methods
        if not method.internal
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert ("/v1/b", "post") in registered
    assert ("/api/v1/events/{message_id}", "get") in registered
    assert registered - documented == set(), "routes missing from /openapi.json"
    assert documented - registered == set(), "documented routes the app does not have"


def test_request_schemas_come_from_the_models(document):
    schemas = document["components"]["schemas"]
    track = schemas["Track"]
    assert "event" in track["required"]
    assert "type" not in track["required"]  # optional on /v1/track, required in a batch
    assert track["properties"]["messageId"]["anyOf"][0]["maxLength"] == 99
    assert track["properties"]["sentAt"]["anyOf"][0]["format"] == "date-time"
    assert schemas["BatchItem"]["required"] == ["type"]
    assert schemas["Group"]["required"] == ["groupId"]
    assert schemas["LegacyTrack"]["required"] == ["event_type"]
    body = document["paths"]["/v1/t"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "text/plain", "application/x-www-form-urlencoded"}
    assert set(document["paths"]["/v1/batch"]["post"]["responses"]) >= {
        "200",
        "400",
        "401",
        "413",
        "415",
        "429",
        "503",
    }
