"""The OpenAPI 3.1 document of the public HTTP API, served at ``GET /openapi.json``.

What the code already states is generated, not written twice: the request bodies come
from the msgspec models that decode them (:mod:`eventrouter.events.model`), the shapes of the
responses from the small Structs below, and a stored event from the table's columns
(:mod:`eventrouter.store.schema`). Written here by hand: the paths, their words, and which
responses each one gives. ``tests/unit/test_openapi.py`` fails when the app registers an
ingestion, health or query route that this document lacks, or documents one it lacks.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Literal

import falcon
import falcon.asgi
import msgspec
from sqlalchemy import JSON, DateTime, String

from eventrouter import __version__
from eventrouter.events import model
from eventrouter.store import schema

#: ``components/schemas/NAME`` references, as msgspec writes them.
REF = "#/components/schemas/{name}"
CACHE_CONTROL = "public, max-age=3600"


# -- response shapes -----------------------------------------------------------------------


class Rejection(msgspec.Struct):
    """One batch item that was not stored, and why."""

    index: int
    code: str
    message: str


class Success(msgspec.Struct, omit_defaults=True):
    """The events are held by every acknowledging sink. ``accepted`` and ``rejected``
    appear only for a batch of which some items were rejected."""

    success: Literal[True]
    accepted: int | None = None
    rejected: list[Rejection] | None = None


class Error(msgspec.Struct, omit_defaults=True):
    """Every error: ``code`` is stable, ``message`` starts with the field it is about.
    ``rejected`` appears with ``invalid_batch``, ``sources`` with ``ambiguous_message_id``."""

    code: str
    message: str
    rejected: list[Rejection] | None = None
    sources: list[str] | None = None


class HealthComponent(msgspec.Struct, omit_defaults=True):
    status: Literal["up", "down"]
    required: bool
    detail: str
    stats: dict[str, Any] | None = None


class Health(msgspec.Struct, omit_defaults=True):
    """``status`` is ``down`` (with HTTP 503) when a required component is down.
    ``components`` only with the admin token or a dashboard session (or for everyone
    under ``server.health_details = "public"``)."""

    status: Literal["ok", "down"]
    components: dict[str, HealthComponent] | None = None


SINGLE_TYPES = {
    "track": model.Track,
    "identify": model.Identify,
    "page": model.Page,
    "screen": model.Screen,
    "group": model.Group,
    "alias": model.Alias,
}
_SHORT = {"track": "t", "identify": "i", "page": "p", "screen": "s", "group": "g", "alias": "a"}


def _schemas() -> dict[str, Any]:
    (_, _, batch_item, *_), components = msgspec.json.schema_components(
        [
            *SINGLE_TYPES.values(),
            model.AnyMessage,
            model.BatchBody,
            model.LegacyTrack,
            Success,
            Error,
            Health,
        ],
        ref_template=REF,
    )
    # On /v1/track and the like, ``type`` may be left out (if sent, it must name the
    # path's type); a batch item needs it.
    for name in SINGLE_TYPES.values():
        component = components[name.__name__]
        component["required"] = [f for f in component["required"] if f != "type"]
    components["BatchItem"] = {**batch_item, "required": ["type"]}
    batch = components["BatchBody"]["properties"]["batch"]
    batch.update(
        items={"$ref": REF.format(name="BatchItem")},
        minItems=1,
        maxItems=2500,
        description="Each item is validated on its own: valid items are stored even when "
        "others are rejected. An item over 32 KB is rejected (event_too_large).",
    )
    components["StoredEvent"] = _stored_event()
    components["EventsPage"] = {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": {"$ref": REF.format(name="StoredEvent")}},
            "next_cursor": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "pass it back as `cursor` for the next page; null on the last",
            },
        },
        "required": ["events", "next_cursor"],
    }
    return components


def _stored_event() -> dict[str, Any]:
    """A stored event as the query API returns it: one property per column."""
    properties: dict[str, Any] = {}
    for column in schema.events.columns:
        if isinstance(column.type, JSON):
            value: dict[str, Any] = {"type": "object"}
        elif isinstance(column.type, DateTime):
            value = {"type": "string", "format": "date-time"}
        else:
            value = {"type": "string"}
            if isinstance(column.type, String) and column.type.length:
                value["maxLength"] = column.type.length
        properties[str(column.name)] = (
            value if not column.nullable else {"anyOf": [value, {"type": "null"}]}
        )
    return {
        "title": "StoredEvent",
        "type": "object",
        "properties": properties,
        "required": list(properties),
    }


# -- paths ---------------------------------------------------------------------------------


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(name=ref)}}},
    }


def _error(description: str, **headers: str) -> dict[str, Any]:
    response = _json("Error", description)
    if headers:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return response


INGEST_RESPONSES = {
    "200": _json("Success", "every accepted event is held by the acknowledging sinks"),
    "400": _error("invalid body: the code names the problem, the message the field"),
    "401": _error(
        "sources are configured and the writeKey is missing or unknown",
        **{"WWW-Authenticate": 'Basic realm="eventrouter" when no writeKey was sent'},
    ),
    "413": _error("the body (compressed or decompressed) is over 32 KB, or 500 KB for a batch"),
    "415": _error("a Content-Encoding other than gzip or none; the message names it"),
    "429": _error("the source is over its rate limit", **{"Retry-After": "seconds"}),
    "503": _error(
        "an acknowledging sink failed or timed out: retry later",
        **{"Retry-After": "seconds"},
    ),
}

#: Basic auth with the writeKey as the username, or ``writeKey`` in the body, or nothing
#: under open ingestion.
INGEST_SECURITY = [{"writeKey": []}, {}]


def _ingest(summary: str, body: str, description: str = "") -> dict[str, Any]:
    schema_ref = {"$ref": REF.format(name=body)}
    return {
        "post": {
            "summary": summary,
            "description": description
            or "The body is JSON, optionally with `Content-Encoding: gzip`. The body "
            "decides, not the Content-Type: `application/json`, `text/plain`, "
            "`application/x-www-form-urlencoded` (axios's default for a Buffer) or none "
            "are read alike. The writeKey is the Basic-auth username or `writeKey` in "
            "the body.",
            "tags": ["ingestion"],
            "security": INGEST_SECURITY,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": schema_ref},
                    "text/plain": {"schema": schema_ref},
                    "application/x-www-form-urlencoded": {"schema": schema_ref},
                },
            },
            "responses": INGEST_RESPONSES,
        }
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/track": _ingest(
            "One track event: the original payload or a Segment track body",
            "LegacyTrackOrTrack",
            "A body with `event_type` is the original payload; any other body is a Segment "
            "track call, as on `/v1/track`.",
        )
    }
    for kind in SINGLE_TYPES:
        operation = _ingest(f"One {kind} event (Segment HTTP Tracking API)", kind.title())
        paths[f"/v1/{kind}"] = operation
        short = _ingest(f"One {kind} event: the short path analytics-next uses", kind.title())
        paths[f"/v1/{_SHORT[kind]}"] = short
    for path in ("batch", "import", "b"):
        paths[f"/v1/{path}"] = _ingest("Up to 2500 events of any type", "BatchBody")
    paths["/health"] = {
        "get": {
            "summary": "The state of every component",
            "tags": ["operations"],
            "responses": {
                "200": _json("Health", "every required component is up"),
                "401": _error("a wrong admin token", **{"WWW-Authenticate": "Bearer"}),
                "429": _error(
                    "too many wrong admin tokens (too_many_attempts)",
                    **{"Retry-After": "seconds"},
                ),
                "503": _json("Health", "a required component is down"),
            },
        }
    }
    query_errors = {
        "401": _error("no valid admin token", **{"WWW-Authenticate": "Bearer"}),
        "503": _error("no SQL sink is configured, or the store cannot be read"),
    }
    text = {"type": "string"}
    paths["/api/v1/events"] = {
        "get": {
            "summary": "Stored events, newest first, a page at a time",
            "description": "Besides the parameters below, up to 10 path conditions "
            "`properties.KEY`, `traits.KEY` or `context.KEY` (keys joined with `.`) "
            "match the JSON value at that path as text.",
            "tags": ["query"],
            "security": [{"adminToken": []}],
            "parameters": [
                *(
                    {"name": name, "in": "query", "schema": text, "description": "exact match"}
                    for name in ("type", "event", "user_id", "anonymous_id", "session_id")
                ),
                {"name": "source", "in": "query", "schema": text, "description": "exact match"},
                {
                    "name": "since",
                    "in": "query",
                    "schema": {"type": "string", "format": "date-time"},
                    "description": "inclusive lower bound on timestamp",
                },
                {
                    "name": "until",
                    "in": "query",
                    "schema": {"type": "string", "format": "date-time"},
                    "description": "exclusive upper bound on timestamp",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "schema": text,
                    "description": "the next_cursor of the previous page",
                },
            ],
            "responses": {
                "200": _json("EventsPage", "one page of events"),
                "400": _error("an unknown, repeated or malformed parameter (invalid_param)"),
                **query_errors,
            },
        }
    }
    paths["/api/v1/events/{message_id}"] = {
        "get": {
            "summary": "One stored event",
            "tags": ["query"],
            "security": [{"adminToken": []}],
            "parameters": [
                {
                    "name": "message_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                    "description": "may contain `/`, as is or percent-encoded",
                },
                {
                    "name": "source",
                    "in": "query",
                    "schema": {"type": "string", "minLength": 1},
                    "description": "the source whose event to return (a messageId is unique "
                    "per source); without it, the one event of that id",
                },
            ],
            "responses": {
                "200": _json("StoredEvent", "the event"),
                "404": _error("no event with that message_id (from that source)"),
                "409": _error(
                    "no source given, and several sources have an event of that id "
                    "(ambiguous_message_id; `sources` lists them)"
                ),
                **query_errors,
            },
        }
    }
    return paths


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    components = _schemas()
    components["LegacyTrackOrTrack"] = {
        "anyOf": [{"$ref": REF.format(name="LegacyTrack")}, {"$ref": REF.format(name="Track")}]
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventrouter",
            "version": __version__,
            "description": "A self-hosted, Segment-compatible analytics event router. "
            'Errors are JSON `{"code", "message"}`; the codes are listed in docs/api.md.',
        },
        "tags": [
            {"name": "ingestion", "description": "Segment HTTP Tracking API"},
            {"name": "query", "description": "stored events (admin token)"},
            {"name": "operations"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "writeKey": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "the writeKey as the username, the password empty",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token (or the dashboard's session cookie)",
                },
            },
        },
    }


@functools.cache
def _encoded() -> tuple[bytes, str]:
    body = msgspec.json.encode(document())
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


class OpenAPIResource:
    """``GET /openapi.json``: no auth; cacheable, with an ETag (``304`` on a match)."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body, etag = _encoded()
        resp.set_header("ETag", etag)
        resp.set_header("Cache-Control", CACHE_CONTROL)
        if etag in (req.get_header("If-None-Match") or ""):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = falcon.MEDIA_JSON
        resp.data = body
