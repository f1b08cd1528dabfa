"""The htmx + Jinja2 admin dashboard, served by the same Falcon app under ``/admin``.

A built-in plugin (the ``admin`` entry point of the ``eventrouter`` group): its
``eventrouter_register_routes`` mounts the pages (:mod:`.routes`) through the same hook
a third-party plugin uses, so the core never imports the dashboard, and
``[plugins] disabled = ["admin"]`` serves no dashboard at all. The views import only
when a server mounts them: a worker that loads this plugin stays light. See
``docs/admin.md``.
"""

from __future__ import annotations

from typing import Any

from eventrouter.bus.hookspecs import hookimpl


@hookimpl
def eventrouter_register_routes(app: Any, routes: Any) -> None:
    """Mount ``/admin`` on ``app``; the dashboard closes (live tail, the privacy page's
    store) when the server stops."""
    from eventrouter.admin.routes import add_routes

    dashboard = add_routes(app, routes.config, routes.bus, routes.store, routes.auth)
    routes.on_shutdown(dashboard.close)
    # For tests and operators' plugins that look at the running dashboard.
    app.dashboard = dashboard
    app.tail = dashboard.hub
