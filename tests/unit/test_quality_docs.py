"""docs/data-quality.md's example plan is a plan: it loads, and it says what the page
says about the events it shows."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from eventrouter.events.commands import IdentifyCommand, PageCommand, TrackCommand
from eventrouter.quality.plans import read_plan

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


def example_plan(tmp_path: Path) -> Path:
    text = (ROOT / "docs/data-quality.md").read_text(encoding="utf-8")
    section = text.split("#### Example: an e-commerce tracking spec", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "shop.toml"
    path.write_text(block, encoding="utf-8")
    return path


def track(event: str, properties: dict) -> TrackCommand:
    return TrackCommand(
        message_id="m",
        source="shop",
        user_id="u",
        event=event,
        properties=properties,
        timestamp=NOW,
        received_at=NOW,
    )


def test_the_example_plan_loads_and_checks_the_events_it_shows(tmp_path):
    plan = read_plan("shop", example_plan(tmp_path))
    assert plan.on_violation == "drop" and plan.unplanned == "violation"
    good = {
        "order_id": "o-1",
        "total": 12.5,
        "currency": "EUR",
        "products": [{"product_id": "p-1", "price": 12.5, "quantity": 1}],
    }
    assert plan.check(track("Order Completed", good)) is None
    (violation,) = plan.check(track("Order Completed", {**good, "total": "12.50"}))
    assert (violation.path, violation.rule) == ("properties.total", "type")
    assert "12.50" not in violation.message and "[value]" in violation.message
    nested = {**good, "products": [{"product_id": "p-1", "price": 1, "quantity": 0}]}
    (violation,) = plan.check(track("Order Completed", nested))
    assert (violation.path, violation.rule) == ("properties.products.0.quantity", "minimum")
    (violation,) = plan.check(track("Order Shipped", {}))
    assert (violation.path, violation.rule) == ("event", "unplanned")
    identify = IdentifyCommand(
        message_id="m",
        source="shop",
        user_id="u",
        traits={"plan": "gold"},
        timestamp=NOW,
        received_at=NOW,
    )
    rules = {(v.path, v.rule) for v in plan.check(identify)}
    assert rules == {("traits.email", "required"), ("traits.plan", "enum")}
    page = PageCommand(
        message_id="m", source="shop", user_id="u", name="Home", timestamp=NOW, received_at=NOW
    )
    assert plan.check(page) is None  # pages are not checked
