"""Jinja2 rendering for the dashboard, with the security headers every page carries.

Templates are looked up first in ``[admin] templates`` (an operator's directory of
overrides), then in this package's ``templates/``; partials are named ``_thing.html``.
Autoescaping is on for every template: event data is always text, never markup.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import msgspec
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape

import router_core

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


def make_environment(template_dirs: list[str]) -> Environment:
    loaders = [FileSystemLoader([str(Path(d)) for d in template_dirs])] if template_dirs else []
    env = Environment(
        loader=ChoiceLoader([*loaders, PackageLoader("admin", "templates")]),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pretty_json=pretty_json, short_time=short_time, number=number, human_bytes=human_bytes
    )
    env.globals["version"] = router_core.__version__
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
