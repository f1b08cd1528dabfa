"""Tracking plans (docs/data-quality.md): each ``on_violation`` policy on every ingestion
path of a live server, in queue mode with a real broker and worker, the reload of a
changed plan, and the replay of dropped events, stored exactly once."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventrouter.config import ConfigError
from eventrouter.quality.plans import PlanError, read_plan
from tests.helpers import (
    ADMIN_BEARER,
    LiveServer,
    ServeProcess,
    eventually,
    make_config,
    run_eventrouter,
)
from tests.ingest_support import uid
from tests.queue_support import WorkerThread, amqp_env, queue_env  # noqa: F401 (fixtures)
from tests.store_support import store_of

PLAN = """
on_violation = "{policy}"
unplanned = "{unplanned}"

[events."Order Completed"]
type = "object"
required = ["order_id", "total"]
[events."Order Completed".properties.order_id]
type = "string"
[events."Order Completed".properties.total]
type = "number"
minimum = 0

[identify]
type = "object"
required = ["email"]
[identify.properties.email]
type = "string"

[group]
type = "object"
[group.properties.employees]
type = "integer"
"""
KEYS = {"strict": "key-strict", "shop": "key-shop", "app": "key-app", "free": "key-free"}
POLICIES = {"strict": "reject", "shop": "drop", "app": "allow"}
NASTY = "<img src=x onerror=alert(1)>\"'><script>"


def write_plan(path: Path, policy: str, unplanned: str = "allow") -> Path:
    path.write_text(PLAN.format(policy=policy, unplanned=unplanned), encoding="utf-8")
    return path


def auth(source: str) -> dict[str, str]:
    token = base64.b64encode(f"{KEYS[source]}:".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def plans_raw(tmp_path: Path, sink: dict[str, Any] | None = None) -> dict[str, Any]:
    plans = {}
    for source, policy in POLICIES.items():
        plans[source] = str(write_plan(tmp_path / f"{source}.toml", policy, "violation"))
    raw: dict[str, Any] = {
        "sources": [{"name": name, "write_key": key} for name, key in KEYS.items()],
        "plugins": {"options": {"quality": {"plans": plans, "reload_interval": "50ms"}}},
    }
    if sink is not None:
        raw["sinks"] = {"local": sink}
    return raw


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    tmp_path = tmp_path_factory.mktemp("plans")
    live = LiveServer(make_config(tmp_path, plans_raw(tmp_path))).start()
    live.tmp_path = tmp_path
    try:
        yield live
    finally:
        live.stop()


def order(user: str, total: Any = 10.5, **extra: Any) -> dict[str, Any]:
    return {
        "userId": user,
        "event": "Order Completed",
        "properties": {"order_id": "o-1", "total": total},
        **extra,
    }


def rejected_rows(server: LiveServer, source: str) -> list[Any]:
    store = store_of({"type": "sqlite", "url": f"sqlite:///{server.tmp_path}/events.db"})
    tables = store.quality_tables()
    try:
        return tables.rejected(source, None, 1000)
    finally:
        tables.close()


# -- reject ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/track", "/v1/t", "/track"])
def test_reject_answers_400_naming_path_and_rule_on_every_single_event_path(server, path):
    user = uid()
    response = server.post(path, order(user, total="ten"), headers=auth("strict"))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "violation"
    assert "properties.total" in body["message"] and "'type'" in body["message"]
    assert body["violations"] == [
        {"path": "properties.total", "rule": "type", "message": body["violations"][0]["message"]}
    ]
    assert "ten" not in body["violations"][0]["message"]  # the value is never echoed
    good = server.post(path, order(user), headers=auth("strict"))
    assert good.status_code == 200, good.text
    stored = server.events(user_id=user)
    assert [e["properties"]["total"] for e in stored] == [10.5]


def test_reject_of_the_legacy_payload_names_the_missing_property(server):
    user = uid()
    body = {"event_type": "Order Completed", "user_id": user, "properties": {"total": 3}}
    response = server.post("/track", body, headers=auth("strict"))
    assert response.status_code == 400, response.text
    assert response.json()["violations"][0] == {
        "path": "properties.order_id",
        "rule": "required",
        "message": response.json()["violations"][0]["message"],
    }
    assert server.events(user_id=user) == []


def test_reject_in_a_batch_refuses_only_the_breaking_items(server):
    user = uid()
    batch = {
        "batch": [
            {"type": "track", **order(user)},
            {"type": "track", **order(user, total=-1)},
            {"type": "identify", "userId": user, "traits": {"name": "no email"}},
            {"type": "identify", "userId": user, "traits": {"email": "a@example.com"}},
            {"type": "group", "userId": user, "groupId": "g1", "traits": {"employees": "many"}},
            {"type": "page", "userId": user, "name": "Home"},  # pages are not checked
        ]
    }
    response = server.post("/v1/batch", batch, headers=auth("strict"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (1, "violation"),
        (2, "violation"),
        (4, "violation"),
    ]
    assert "properties.total" in body["rejected"][0]["message"]
    assert "minimum" in body["rejected"][0]["message"]
    assert "traits.email" in body["rejected"][1]["message"]
    assert "traits.employees" in body["rejected"][2]["message"]
    assert sorted(e["type"] for e in server.events(user_id=user)) == ["identify", "page", "track"]


def test_an_unplanned_event_is_a_violation_when_the_plan_says_so(server):
    user = uid()
    response = server.post(
        "/v1/track", {"userId": user, "event": NASTY, "properties": {}}, headers=auth("strict")
    )
    assert response.status_code == 400, response.text
    assert response.json()["violations"][0]["rule"] == "unplanned"
    assert server.events(user_id=user) == []


def test_a_source_without_a_plan_is_not_checked(server):
    user = uid()
    response = server.post("/v1/track", order(user, total="ten"), headers=auth("free"))
    assert response.status_code == 200, response.text
    assert server.events(user_id=user)[0]["properties"]["total"] == "ten"


# -- allow and drop ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_allow_stores_the_event_with_its_violations_in_context(server, path):
    user = uid()
    event = order(user, total="ten")
    body = {"batch": [{"type": "track", **event}]} if path == "/v1/batch" else event
    response = server.post(path, body, headers=auth("app"))
    assert response.status_code == 200, response.text
    (stored,) = server.events(user_id=user)
    assert stored["properties"]["total"] == "ten"
    violations = stored["context"]["violations"]
    assert [(v["path"], v["rule"]) for v in violations] == [("properties.total", "type")]


def test_allow_leaves_a_valid_event_untouched(server):
    user = uid()
    assert server.post("/v1/track", order(user), headers=auth("app")).status_code == 200
    assert "violations" not in server.events(user_id=user)[0]["context"]


@pytest.mark.parametrize("path", ["/v1/identify", "/v1/batch"])
def test_drop_answers_200_stores_nothing_and_keeps_the_event_with_its_reason(server, path):
    user = uid()
    event = {"userId": user, "traits": {"email": 42}, "messageId": uid("m")}
    body = {"batch": [{"type": "identify", **event}]} if path == "/v1/batch" else event
    response = server.post(path, body, headers=auth("shop"))
    assert response.status_code == 200, response.text
    assert server.events(user_id=user) == []
    (row,) = [r for r in rejected_rows(server, "shop") if r.message_id == event["messageId"]]
    assert row.type == "identify" and row.name == "identify"
    assert json.loads(row.violations)[0]["path"] == "traits.email"
    assert json.loads(row.command)["user_id"] == user


@pytest.mark.parametrize(
    "page", ["/admin/catalogue", "/admin/violations", "/admin/catalogue/draft?source=shop"]
)
def test_the_quality_pages_need_the_admin_sign_in(server, page):
    assert server.client.get(page).status_code in (302, 303, 401)
    response = server.client.get(page, headers=ADMIN_BEARER)
    assert response.status_code == 200, response.text
    if "draft" in page:
        assert response.headers["content-type"].startswith("text/plain")
        assert 'on_violation = "allow"' in response.text


def test_an_unknown_source_on_a_quality_page_is_a_400(server):
    response = server.client.get("/admin/violations?source=nope", headers=ADMIN_BEARER)
    assert response.status_code == 400


def test_health_shows_the_plans_in_force(server):
    quality = server.components()["quality"]
    assert quality["status"] == "up"
    assert quality["stats"]["plans"] == 3


# -- reload ------------------------------------------------------------------------------
def test_a_changed_plan_is_in_force_without_a_restart(tmp_path):
    plan = write_plan(tmp_path / "web.toml", "reject")
    raw = {
        "sources": [{"name": "web", "write_key": "key-web"}],
        "plugins": {
            "options": {"quality": {"plans": {"web": str(plan)}, "reload_interval": "50ms"}}
        },
    }
    live = LiveServer(make_config(tmp_path, raw)).start()
    headers = {"Authorization": "Basic " + base64.b64encode(b"key-web:").decode()}
    try:
        user = uid()
        event = order(user, total="ten", messageId=uid("m"))
        assert live.post("/v1/track", event, headers=headers).status_code == 400
        # Fixed: total may be a string now. The mtime is moved on, so that a rewrite
        # within the file system's time granularity is still seen as a change.
        plan.write_text(
            plan.read_text().replace('type = "number"\nminimum = 0', 'type = ["number", "string"]')
        )
        os.utime(plan, (time.time() + 5, time.time() + 5))
        eventually(
            lambda: live.post("/v1/track", event, headers=headers).status_code == 200,
            "the fixed plan accepts the event",
        )
        assert len(live.events(user_id=user)) == 1  # one messageId: stored once
        # A broken plan leaves the last good one in force, and /health says why.
        plan.write_text("on_violation = 'sometimes'\n")
        os.utime(plan, (time.time() + 10, time.time() + 10))
        eventually(
            lambda: live.components()["quality"]["status"] != "up", "health shows the broken plan"
        )
        assert "on_violation" in live.components()["quality"]["detail"]
        bad = {"userId": uid(), "event": "Order Completed", "properties": {"total": 1}}
        refused = live.post("/v1/track", bad, headers=headers)
        assert refused.status_code == 400, refused.text  # order_id is still required
    finally:
        live.stop()


# -- bad plans ---------------------------------------------------------------------------
def test_a_bad_plan_is_refused_naming_its_file_and_key(tmp_path):
    path = tmp_path / "web.toml"
    path.write_text('[events."Signed Up"]\ntype = "nonsense"\n')
    with pytest.raises(PlanError) as error:
        read_plan("web", path)
    assert str(path) in str(error.value) and "events.Signed Up" in str(error.value)
    path.write_text('[events.X]\n"$ref" = "http://127.0.0.1:9/schema.json"\n')
    with pytest.raises(PlanError, match="remote"):
        read_plan("web", path)
    path.write_text("on_violation = 'bounce'\n")
    with pytest.raises(PlanError, match="on_violation: 'bounce' is not one of"):
        read_plan("web", path)


def test_a_plan_for_an_unknown_source_stops_the_start(tmp_path):
    plan = write_plan(tmp_path / "web.toml", "reject")
    config_path = tmp_path / "eventrouter.toml"
    config_path.write_text(
        '[[sources]]\nname = "web"\nwrite_key = "k"\n\n'
        f"[plugins.options.quality]\nplans = {{ wbe = {json.dumps(str(plan))} }}\n"
    )
    result = run_eventrouter("serve", "--config", str(config_path), "--port", "0")
    assert result.returncode != 0
    assert "plugins.options.quality.plans.wbe: no source named 'wbe'" in result.stderr


def test_config_check_loads_every_plan(tmp_path):
    plan = write_plan(tmp_path / "web.toml", "drop")
    config_path = tmp_path / "eventrouter.toml"
    config_path.write_text(
        '[[sources]]\nname = "web"\nwrite_key = "k"\n\n'
        '[plugins.options.quality]\nplans = { web = "web.toml" }\n'
    )
    result = run_eventrouter("config", "check", str(config_path))
    assert result.returncode == 0, result.stderr
    assert "quality: web: " in result.stdout and "on_violation drop, 1 event(s)" in result.stdout
    plan.write_text("[events.X]\ntype = 3\n")
    result = run_eventrouter("config", "check", str(config_path))
    assert result.returncode == 2
    assert f"{plan}: events.X: not a valid JSON Schema" in result.stderr


def test_a_plan_directory_of_schema_files(tmp_path):
    plan = tmp_path / "app"
    (plan / "events").mkdir(parents=True)
    (plan / "plan.toml").write_text('on_violation = "reject"\n')
    (plan / "events" / "Signed Up.json").write_text(
        json.dumps({"type": "object", "required": ["plan"]})
    )
    (plan / "identify.json").write_text(json.dumps({"required": ["email"]}))
    loaded = read_plan("app", plan)
    assert loaded.on_violation == "reject"
    assert sorted(loaded.events) == ["Signed Up"]
    assert loaded.identify is not None and loaded.group is None
    with pytest.raises(ConfigError):
        (plan / "group.json").write_text("{not json")
        read_plan("app", plan)


# -- queue mode --------------------------------------------------------------------------
def test_every_policy_in_queue_mode(queue_env, tmp_path):  # noqa: F811
    raw = queue_env.raw(**plans_raw(tmp_path))
    config = make_config(tmp_path, raw)
    edge = LiveServer(config).start()
    try:
        with WorkerThread(config):
            strict, shop, app, good = uid(), uid(), uid(), uid()
            refused = edge.post("/v1/track", order(strict, total="x"), headers=auth("strict"))
            assert refused.status_code == 400, refused.text
            assert refused.json()["violations"][0]["path"] == "properties.total"
            dropped = order(shop, total="x", messageId=uid("m"))
            assert edge.post("/v1/track", dropped, headers=auth("shop")).status_code == 200
            assert (
                edge.post("/v1/track", order(app, total="x"), headers=auth("app")).status_code
                == 200
            )
            assert edge.post("/v1/track", order(good), headers=auth("strict")).status_code == 200
            eventually(lambda: len(edge.events(user_id=good)) == 1, "the valid event is stored")
            eventually(lambda: len(edge.events(user_id=app)) == 1, "the allowed event is stored")
            (allowed,) = edge.events(user_id=app)
            assert allowed["context"]["violations"][0]["rule"] == "type"
            assert edge.events(user_id=strict) == [] and edge.events(user_id=shop) == []
            store = store_of(raw["sinks"]["local"])
            tables = store.quality_tables()
            try:
                ids = [r.message_id for r in tables.rejected("shop", None, 100)]
            finally:
                tables.close()
            assert ids == [dropped["messageId"]]
    finally:
        edge.stop()


def test_no_plan_registers_nothing(tmp_path):
    """Zero cost without a plan: no gate, no stage, no quality component."""
    live = LiveServer(make_config(tmp_path, {})).start()
    try:
        assert "quality" not in live.components()
        assert live.post("/v1/track", order(uid())).status_code == 200
    finally:
        live.stop()


def test_sighup_puts_a_changed_plan_in_force_in_eventrouter_serve(tmp_path):
    """The file watch is an hour away: only the SIGHUP can bring the new plan in."""
    plan = write_plan(tmp_path / "web.toml", "reject")
    config_path = tmp_path / "eventrouter.toml"
    config_path.write_text(
        '[[sources]]\nname = "web"\nwrite_key = "key-web"\n\n'
        f'[sinks.local]\ntype = "sqlite"\nurl = "sqlite:///{tmp_path}/events.db"\n\n'
        '[plugins.options.quality]\nplans = { web = "web.toml" }\nreload_interval = "1h"\n'
    )
    server = ServeProcess(tmp_path, "--config", str(config_path), workers=2).wait_ready()
    headers = {"Authorization": "Basic " + base64.b64encode(b"key-web:").decode()}
    try:
        event = order(uid(), total="ten", messageId=uid("m"))
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/v1/track", json=event, headers=headers).status_code == 400
            plan.write_text(
                plan.read_text().replace('on_violation = "reject"', 'on_violation = "allow"')
            )
            server.process.send_signal(signal.SIGHUP)

            def allowed() -> bool:
                # A new connection each try: gunicorn's SIGHUP replaces the workers, and
                # an old worker closes its idle keep-alive connections as it leaves (a
                # request sent on one meets a reset, as any client's would at a reload).
                try:
                    response = httpx.post(
                        f"{server.url}/v1/track", json=event, headers=headers, timeout=30
                    )
                except httpx.TransportError:
                    return False
                return response.status_code == 200

            eventually(allowed, "the workers reloaded the plan")
    finally:
        server.stop()


def test_replay_in_queue_mode_goes_through_the_broker_once(amqp_env, tmp_path):  # noqa: F811
    """Fixed plan, replay twice: the worker stores the dropped event once."""
    from eventrouter.quality.cli import replay

    raw = amqp_env.raw(**plans_raw(tmp_path))
    config = make_config(tmp_path, raw)
    edge = LiveServer(config).start()
    user = uid()
    event = order(user, total="x", messageId=uid("m"))
    try:
        assert edge.post("/v1/track", event, headers=auth("shop")).status_code == 200
    finally:
        edge.stop()
    shop_plan = Path(raw["plugins"]["options"]["quality"]["plans"]["shop"])
    shop_plan.write_text(shop_plan.read_text().replace('type = "number"', 'type = "string"'))
    first = asyncio.run(replay(config, "shop", None, dry_run=False))
    assert (first.sent, first.still_breaking) == (1, 0)
    with WorkerThread(config):
        edge = LiveServer(config).start()
        try:
            eventually(lambda: len(edge.events(user_id=user)) == 1, "the worker stored it")
            again = asyncio.run(replay(config, "shop", None, dry_run=False))
            assert (again.sent, again.already_stored) == (0, 1)
            assert len(edge.events(user_id=user)) == 1
        finally:
            edge.stop()
