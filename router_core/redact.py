"""Secrets out of what eventrouter shows: a connection URL without its password.

Logs, ``/health``, ``config check`` and error messages name the brokers, stores and Redis
servers they talk to; :func:`redact_url` is how every one of them writes such a URL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Query parameters that carry a secret (redis-py and libpq read ``?password=``).
_SECRET_PARAM = re.compile(
    r"([?&](?:password|passwd|pass|pwd|secret|token|access_key|secret_key|sslpassword)=)[^&#]*",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """The URL without its password (in the userinfo or a ``?password=``), for logs,
    /health and ``config check``."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        rest = f"{user}:***@{host}" if ":" in credentials else f"{user}@{host}"
    rest = _SECRET_PARAM.sub(r"\1***", rest)
    return f"{scheme}{sep}{rest}"


def redact_urls(urls: str | Sequence[str]) -> str:
    """One URL, or a list of them (a cluster's nodes), without passwords, comma-separated."""
    if isinstance(urls, str):
        return redact_url(urls)
    return ", ".join(redact_url(url) for url in urls)
