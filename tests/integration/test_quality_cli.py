"""``eventrouter violations list|replay`` and ``eventrouter plan draft``, run as the real
commands against the store a live server wrote (docs/data-quality.md)."""

from __future__ import annotations

import base64
import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from eventrouter import config as config_module
from eventrouter.events.commands import IdentifyCommand, TrackCommand
from eventrouter.quality.plans import read_plan
from tests.helpers import ADMIN_TOKEN, LiveServer, eventually, run_eventrouter
from tests.ingest_support import uid
from tests.integration.test_quality_plans import NASTY, PLAN
from tests.store_support import store_of

HEADERS = {"Authorization": "Basic " + base64.b64encode(b"key-shop:").decode()}


def write_config(tmp_path: Path, plan: Path, **quality) -> Path:
    path = tmp_path / "eventrouter.toml"
    options = {"plans": {"shop": plan.name}, "reload_interval": "50ms", **quality}
    lines = [
        "[[sources]]",
        'name = "shop"',
        'write_key = "key-shop"',
        "",
        "[sinks.local]",
        'type = "sqlite"',
        f"url = {json.dumps(f'sqlite:///{tmp_path}/events.db')}",
        "",
        "[admin]",
        f"token = {json.dumps(ADMIN_TOKEN)}",
        "",
        "[plugins.options.quality]",
    ]
    for key, value in options.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(config_path: Path) -> LiveServer:
    return LiveServer(config_module.load(str(config_path))).start()


def test_replay_stores_what_was_dropped_exactly_once(tmp_path):
    plan = tmp_path / "shop.toml"
    plan.write_text(PLAN.format(policy="drop", unplanned="allow"))
    config_path = write_config(tmp_path, plan)
    user = uid()
    fixable = {
        "userId": user,
        "event": "Order Completed",
        "messageId": uid("m"),
        "properties": {"order_id": NASTY, "total": "12.50"},
    }
    hopeless = {**fixable, "messageId": uid("m"), "properties": {"total": 1}}
    live = serve(config_path)
    try:
        for event in (fixable, hopeless):
            assert live.post("/v1/track", event, headers=HEADERS).status_code == 200
        assert live.events(user_id=user) == []
    finally:
        live.stop()

    listed = run_eventrouter("violations", "list", "--config", str(config_path), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["message_id"] for r in rows) == sorted(
        [fixable["messageId"], hopeless["messageId"]]
    )
    assert {v["path"] for r in rows for v in r["violations"]} == {
        "properties.total",
        "properties.order_id",
    }

    # Not fixed yet: nothing is sent.
    args = ("violations", "replay", "--config", str(config_path), "--source", "shop")
    result = run_eventrouter(*args, "--since", "1h")
    assert result.returncode == 0, result.stderr
    assert "sent 0 event(s)" in result.stdout and "2 still break" in result.stdout

    plan.write_text(
        PLAN.format(policy="drop", unplanned="allow").replace(
            'type = "number"\nminimum = 0', 'type = ["number", "string"]'
        )
    )
    result = run_eventrouter(*args)
    assert result.returncode == 0, result.stderr
    assert "sent 1 event(s); 0 stored already" in result.stdout, result.stdout
    assert "1 still break" in result.stdout
    again = run_eventrouter(*args)
    assert "sent 0 event(s); 1 stored already" in again.stdout, again.stdout

    live = serve(config_path)
    try:
        (stored,) = live.events(user_id=user)
        assert stored["message_id"] == fixable["messageId"]
        assert stored["properties"] == {"order_id": NASTY, "total": "12.50"}
    finally:
        live.stop()


def test_plan_draft_turns_the_catalogue_into_a_plan_that_accepts_the_traffic(tmp_path):
    plan = tmp_path / "shop.toml"
    plan.write_text('on_violation = "allow"\n')
    config_path = write_config(tmp_path, plan, catalogue=True, flush="50ms")
    user = uid()
    order = {
        "order_id": "o-1",
        "total": 12,
        "coupon": None,
        "products": [{"sku": "a", "price": 2.5}],
        "shipping": {"method": "post", "days": 3},
    }
    live = serve(config_path)
    try:
        for total in (12, 12.5):
            event = {"userId": user, "event": NASTY, "properties": {**order, "total": total}}
            assert live.post("/v1/track", event, headers=HEADERS).status_code == 200
        identify = {"userId": user, "traits": {"email": "a@example.com"}}
        assert live.post("/v1/identify", identify, headers=HEADERS).status_code == 200

        tables = store_of({"type": "sqlite", "url": f"sqlite:///{tmp_path}/events.db"})
        tables = tables.quality_tables()

        def counted() -> bool:
            names = {row.name for row in tables.catalogue("shop", None)}
            return {NASTY, "identify"} <= names

        eventually(counted, "the catalogue was flushed to the store")
        tables.close()
    finally:
        live.stop()
    result = run_eventrouter("plan", "draft", "--config", str(config_path), "--source", "shop")
    assert result.returncode == 0, result.stderr
    draft = tomllib.loads(result.stdout)
    schema = draft["events"][NASTY]
    assert schema["required"] == ["coupon", "order_id", "products", "shipping", "total"]
    assert schema["properties"]["total"] == {"type": "number"}
    assert schema["properties"]["coupon"] == {"type": "null"}
    assert schema["properties"]["products"]["items"]["properties"]["price"] == {"type": "number"}
    assert schema["properties"]["shipping"]["properties"]["days"] == {"type": "integer"}
    out = tmp_path / "draft.toml"
    result = run_eventrouter(
        "plan", "draft", "--config", str(config_path), "--source", "shop", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    loaded = read_plan("shop", out)
    now = datetime.now(UTC)
    event = TrackCommand(
        message_id="m", source="shop", event=NASTY, properties=order, timestamp=now, received_at=now
    )
    assert loaded.check(event) is None
    bad = TrackCommand(
        message_id="m",
        source="shop",
        event=NASTY,
        properties={**order, "total": "x"},
        timestamp=now,
        received_at=now,
    )
    assert [(v.path, v.rule) for v in loaded.check(bad)] == [("properties.total", "type")]
    traits = IdentifyCommand(
        message_id="m", source="shop", traits={}, timestamp=now, received_at=now
    )
    assert [(v.path, v.rule) for v in loaded.check(traits)] == [("traits.email", "required")]
    # An existing file is never overwritten.
    assert (
        run_eventrouter(
            "plan", "draft", "--config", str(config_path), "--source", "shop", "-o", str(out)
        ).returncode
        != 0
    )
