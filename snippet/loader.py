"""The copy-paste loader snippet for a source, in the shape of Segment's.

The stub defines ``window.analytics`` as a queue whose methods record their calls; the
library, loaded asynchronously from this server's CDN origin, replays the queue once it
has loaded. Page code written for Segment's snippet keeps working unchanged.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

SNIPPET_VERSION = "eventrouter-1"
#: Methods the stub queues until the library has loaded (Segment's list).
STUB_METHODS = (
    "track",
    "identify",
    "page",
    "screen",
    "group",
    "alias",
    "reset",
    "ready",
    "debug",
    "on",
    "off",
    "once",
    "setAnonymousId",
    "trackSubmit",
    "trackClick",
    "trackLink",
    "trackForm",
    "pageview",
    "addSourceMiddleware",
    "addIntegrationMiddleware",
    "addDestinationMiddleware",
    "register",
)

#: The stub, with ``%(name)s`` placeholders for JavaScript literals.
_TEMPLATE = (Path(__file__).parent / "loader.js.tmpl").read_text().strip()


def _js(value: object) -> str:
    """A JavaScript literal that cannot end the surrounding ``<script>`` element."""
    text = msgspec.json.encode(value).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def loader_snippet(write_key: str, origin: str) -> str:
    """The ``<script>`` a web page pastes into its ``<head>`` to send to ``origin``."""
    return _TEMPLATE % {
        "methods": _js(list(STUB_METHODS)),
        "origin": _js(origin.rstrip("/")),
        "key": _js(write_key),
        "version": _js(SNIPPET_VERSION),
    }
