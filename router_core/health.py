"""Health reporting shared by sinks, plugins and ``GET /health``."""

from __future__ import annotations

import msgspec


class ComponentHealth(msgspec.Struct, kw_only=True):
    """The state of one component, as shown by ``GET /health``."""

    name: str
    up: bool
    required: bool = False
    detail: str = ""
    stats: dict[str, int | float | str | None] = {}
