"""Every route of the dashboard: pages, fragments, the live-tail socket, static files.

:func:`add_routes` is what the admin plugin's ``eventrouter_register_routes`` calls
(:mod:`eventrouter.admin`); the dashboard reads the configured store through
:mod:`eventrouter.store.query`, exactly as ``GET /api/v1/events`` does.
"""

from __future__ import annotations

from pathlib import Path

import falcon.asgi

from eventrouter.admin import analysis, quality, views
from eventrouter.admin.active_users import ActiveUsersView
from eventrouter.admin.privacy import PrivacyView
from eventrouter.admin.render import Renderer, make_environment
from eventrouter.admin.tail import TailHub
from eventrouter.bus.context import BusContext
from eventrouter.config import Config
from eventrouter.edge.auth import AdminAuth
from eventrouter.store.query import EventStore

STATIC_DIR = Path(__file__).parent / "static"


def add_routes(
    app: falcon.asgi.App,
    config: Config,
    bus: BusContext,
    store: EventStore | None,
    auth: AdminAuth,
) -> views.Dashboard:
    """Mount the dashboard on ``app``; returns what its views share, which the app closes
    at shutdown (``Dashboard.close``: the live-tail hub, the privacy page's store)."""
    renderer = Renderer(make_environment(config.admin.templates))
    hub = TailHub(config, store)
    d = views.Dashboard(config, bus, store, auth, renderer, hub)
    app.add_route("/admin", views.RootView(d))
    app.add_route("/admin/login", views.LoginView(d))
    app.add_route("/admin/logout", views.LogoutView(d))
    app.add_route("/admin/events", views.EventsView(d))
    # One event, one user: the ids are query values, never path segments (a messageId
    # or user id of ".." cannot be a path segment: browsers resolve it away, encoded or
    # not). The path forms still answer, for bookmarks. See docs/admin.md.
    app.add_route("/admin/event", views.EventView(d))
    app.add_route("/admin/events/{message_id:path}", views.EventView(d))
    app.add_route("/admin/chart", views.ChartView(d))
    app.add_route("/admin/breakdown", views.BreakdownView(d))
    app.add_route("/admin/event-names", views.EventNamesView(d))
    app.add_route("/admin/condition-row", views.ConditionRowView(d))
    app.add_route("/admin/live", views.LiveView(d))
    app.add_route("/admin/live/ws", views.LiveView(d))
    app.add_route("/admin/user", views.UserView(d))
    app.add_route("/admin/users/{user_id:path}", views.UserView(d))
    app.add_route("/admin/status", views.StatusView(d))
    app.add_route("/admin/sources", views.SourcesView(d))
    app.add_route("/admin/privacy", PrivacyView(d))
    app.add_route("/admin/active-users", ActiveUsersView(d))
    app.add_route("/admin/funnels", analysis.FunnelsView(d))
    app.add_route("/admin/retention", analysis.RetentionView(d))
    quality.add_routes(app, d)
    app.add_static_route("/admin/static", str(STATIC_DIR))
    return d
