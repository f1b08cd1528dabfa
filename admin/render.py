"""Jinja2 rendering for the dashboard, with the security headers every page carries.

Templates are looked up first in ``[admin] templates`` (an operator's directory of
overrides), then in this package's ``templates/``; partials are named ``_thing.html``.
Autoescaping is on for every template: event data is always text, never markup.

A value that goes into a URL goes through :func:`dashboard_url` (the template global
``url``) or :func:`query_value` (the filter ``query_value``; ``urlencode`` is the same
for a string): each is exactly one query value, never part of a path. No encoding makes
a path segment of ``.`` or ``..`` (a browser resolves ``%2e%2e`` away too), so
event-derived values never go in paths.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import falcon
import falcon.asgi
import msgspec
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape

import eventrouter

#: No inline script or style anywhere: htmx and our CSS come from /admin/static, the
#: chart is SVG with presentation attributes. WebSockets go to this same origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_pretty = msgspec.json.Encoder(order="sorted")


def pretty_json(value: Any) -> str:
    """Indented JSON text (autoescaped by the template like any other text)."""
    return msgspec.json.format(_pretty.encode(value), indent=2).decode()


def short_time(value: str | datetime | None) -> str:
    """``2026-11-28T10:01:02.345Z`` → ``2026-11-28 10:01:02``."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text.replace("T", " ")[:19]


def number(value: int | float | None) -> str:
    return "" if value is None else f"{value:,}"


def human_bytes(value: int | None) -> str:
    if value is None:
        return "unknown"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def query_value(value: Any) -> str:
    """``value`` as one query value: every character but ``A-Za-z0-9_.-~`` is
    percent-encoded (``/``, ``?``, ``#``, ``&``, ``=``, ``%`` and quotes included).

    Also installed as Jinja's ``urlencode`` for a string, whose built-in leaves ``/``
    as it is (the filter the row URL of issue 18 used)."""
    return quote(str(value), safe="")


def _strict_urlencode(value: Any) -> str:
    """Jinja's ``urlencode``, with every value encoded by :func:`query_value`."""
    if isinstance(value, dict):
        value = value.items()
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return query_value(value)
    return "&".join(f"{query_value(k)}={query_value(v)}" for k, v in value)


def dashboard_url(path: str, **params: Any) -> str:
    """A dashboard URL: ``path`` (a literal ``/admin/...`` path written in a template,
    never data) and ``params`` as query values, in the order given; None is left out.

    ``url("/admin/event", message_id="../x", source="web")`` →
    ``/admin/event?message_id=..%2Fx&source=web``."""
    if not path.startswith("/admin/") or "/." in path or any(c in path for c in "?#%\\"):
        raise ValueError(f"not a literal dashboard path: {path!r}")
    query = "&".join(
        f"{query_value(name)}={query_value(value)}"
        for name, value in params.items()
        if value is not None
    )
    return f"{path}?{query}" if query else path


def make_environment(template_dirs: list[str]) -> Environment:
    loaders = [FileSystemLoader([str(Path(d)) for d in template_dirs])] if template_dirs else []
    env = Environment(
        loader=ChoiceLoader([*loaders, PackageLoader("eventrouter.admin", "templates")]),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pretty_json=pretty_json,
        short_time=short_time,
        number=number,
        human_bytes=human_bytes,
        query_value=query_value,
        urlencode=_strict_urlencode,
    )
    env.globals.update(version=eventrouter.__version__, url=dashboard_url)
    return env


class Renderer:
    def __init__(self, env: Environment) -> None:
        self.env = env

    def render(
        self,
        resp: falcon.asgi.Response,
        template: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> None:
        resp.status = status
        resp.content_type = falcon.MEDIA_HTML
        resp.text = self.env.get_template(template).render(**context)
        for name, value in SECURITY_HEADERS.items():
            resp.set_header(name, value)

    def fragment(self, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(**context)
