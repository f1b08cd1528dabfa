"""The extension points the core offers in place of importing its plugins: routes
mounted through ``eventrouter_register_routes`` (the dashboard and the snippet origin
are built-in plugins using it), pipeline stages registered through the ``BusContext``
in a declared order, and the suppression list's change notice."""

from __future__ import annotations

import falcon
import msgspec

from eventrouter.bus.hookspecs import hookimpl
from tests.helpers import ADMIN_BEARER
from tests.privacy_support import PrivacyPage


class Hello:
    """A third-party plugin with a page of its own, reading the store through the
    ``RouteContext`` the core gives it."""

    def __init__(self) -> None:
        self.closed = False

    @hookimpl
    def eventrouter_register_routes(self, app, routes):
        plugin = self

        class Count:
            async def on_get(self, req, resp):
                if routes.auth.bearer(req) is None:
                    raise falcon.HTTPUnauthorized(description="admin token required")
                resp.media = {"store": routes.store is not None, "role": routes.bus.role}

        async def close():
            plugin.closed = True

        app.add_route("/hello/count", Count())
        routes.on_shutdown(close)


def test_a_plugin_mounts_its_own_route_and_closes_with_the_server(start_server):
    hello = Hello()
    server = start_server(plugins=[hello])
    assert server.client.get("/hello/count").status_code == 401
    response = server.client.get("/hello/count", headers=ADMIN_BEARER)
    assert response.status_code == 200
    assert response.json() == {"store": True, "role": "edge"}
    # The built-in plugins mounted theirs through the same hook.
    assert server.client.get("/admin/login").status_code == 200
    assert server.client.get("/snippet/v1/latest/analytics.min.js").status_code == 200
    server.stop()
    assert hello.closed


def test_disabling_the_admin_plugin_serves_no_dashboard(start_server):
    server = start_server({"plugins": {"disabled": ["admin"]}})
    assert server.client.get("/admin/login").status_code == 404
    assert server.app.dashboard is None
    # Ingestion, the query API and the snippet origin do not depend on the dashboard.
    assert server.post("/v1/track", {"event": "kept", "userId": "u"}).status_code == 200
    assert [e["event"] for e in server.events()] == ["kept"]
    assert server.client.get("/snippet/v1/latest/analytics.min.js").status_code == 200


class Stamp:
    """A stage that appends its name to ``properties.stages`` (run order, as stored)."""

    def __init__(self, name: str, order: int | None = None) -> None:
        self.name = name
        if order is not None:
            self.stage_order = order

    @hookimpl
    def eventrouter_process_batch(self, commands):
        return [
            msgspec.structs.replace(
                c, properties={**c.properties, "stages": [*c.properties["stages"], self.name]}
            )
            for c in commands
        ]


class Registers:
    """A plugin that registers its stage at start-up through the BusContext, the way the
    built-in dedup, scrub and suppress stages do, twice (the second is refused)."""

    def __init__(self) -> None:
        self.added: list[bool] = []

    @hookimpl
    def eventrouter_startup(self, bus):
        self.added.append(bus.add_plugin(Stamp("registered", order=10), "stamp:registered"))
        self.added.append(bus.add_plugin(Stamp("again", order=10), "stamp:registered"))


def stored_stages(server) -> list[str]:
    body = {"event": "e", "userId": "u", "properties": {"stages": []}}
    assert server.post("/v1/track", body).status_code == 200
    [event] = server.events()
    return event["properties"]["stages"]


def test_stages_run_in_their_declared_order_not_registration_order(start_server):
    registers = Registers()
    # Registered late-to-early on purpose: the order comes from stage_order alone.
    server = start_server(
        plugins=[Stamp("late", order=700), Stamp("default"), Stamp("early", order=50), registers]
    )
    assert registers.added == [True, False]
    assert stored_stages(server) == ["registered", "early", "default", "late"]


def named(stage: Stamp, name: str) -> Stamp:
    """pluggy registers a plugin under its ``__name__`` (what ``eventrouter plugins``
    lists and ``[plugins] stage_order`` names)."""
    stage.__name__ = name
    return stage


def test_config_overrides_a_stages_order_by_plugin_name(start_server):
    early = named(Stamp("early", order=50), "early-one")
    late = named(Stamp("late", order=700), "late-one")
    server = start_server({"plugins": {"stage_order": {"late-one": 1}}}, plugins=[early, late])
    assert stored_stages(server) == ["late", "early"]


class Listens:
    def __init__(self) -> None:
        self.notices = 0

    @hookimpl
    def eventrouter_suppressions_changed(self):
        self.notices += 1


def test_the_suppression_list_change_reaches_plugins_through_the_hook(start_server):
    """With a refresh of an hour, only the notice can make this process see the change."""
    listens = Listens()
    server = start_server({"privacy": {"refresh": "1h"}}, plugins=[listens])
    assert server.post("/v1/track", {"event": "before", "userId": "gone-user"}).status_code == 200
    with PrivacyPage(server.url) as page:
        assert page.reviewed_change("suppress", "user_id", "gone-user").status_code == 200
    assert listens.notices == 1
    assert server.post("/v1/track", {"event": "after", "userId": "gone-user"}).status_code == 200
    # The built-in suppress stage re-read the list on the same notice: not stored.
    assert [e["event"] for e in server.events()] == ["before"]
