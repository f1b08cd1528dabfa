"""What a tracking plan costs per event (docs/data-quality.md, "What it costs").

Two parts, both in this process, no services:

- ``validators``: µs per event to check the ``Order Completed`` properties of
  docs/data-quality.md's e-commerce plan, valid and invalid, with each validator that
  is installed: jsonschema-rs (what eventrouter uses, through ``Plan.check``, which
  includes decoding the raw ``properties``), and, if present, jsonschema and
  fastjsonschema, compiled once as eventrouter compiles a plan;
- ``edge``: server CPU per event of ``POST /v1/batch`` (100 ~400-byte ``Order
  Completed`` events a request) through ``create_app`` (the embedded default, SQLite in
  a temporary directory) with no plan, with a plan whose events all pass (``reject``
  and ``drop``: the gate and the stage both run), and with the catalogue on. The
  variants alternate for ``--rounds`` rounds, so a machine that slows down slows all.

    .venv/bin/python bench/quality.py [--events 20000] [--rounds 3]
    make bench BENCH=quality BENCH_ARGS="--rounds 5"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]


def example_plan(directory: Path) -> Path:
    text = (ROOT / "docs/data-quality.md").read_text(encoding="utf-8")
    section = text.split("#### Example: an e-commerce tracking spec", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    path = directory / "shop.toml"
    path.write_text(block, encoding="utf-8")
    return path


GOOD = {
    "order_id": "o-1001",
    "total": 42.5,
    "revenue": 38.0,
    "shipping": 4.5,
    "tax": 3.1,
    "currency": "EUR",
    "coupon": None,
    "products": [
        {"product_id": "p-1", "price": 20.0, "quantity": 1},
        {"product_id": "p-2", "price": 22.5, "quantity": 1},
    ],
}
BAD = {**GOOD, "total": "42.50"}


def per_call(function: Any, argument: Any, number: int) -> float:
    """µs per call, the best of 3 runs."""
    return min(timeit.repeat(lambda: function(argument), number=number, repeat=3)) / number * 1e6


def validators(events: int, directory: Path) -> list[tuple[str, str, float]]:
    from eventrouter.events.commands import TrackCommand
    from eventrouter.quality.plans import read_plan

    plan = read_plan("shop", example_plan(directory))
    schema = plan.schemas["events.Order Completed"]
    now = datetime.now(UTC)

    def command(properties: dict) -> Any:
        raw = msgspec.json.encode(properties)
        return lambda: TrackCommand(
            message_id="m",
            source="shop",
            event="Order Completed",
            properties=msgspec.Raw(raw),
            timestamp=now,
            received_at=now,
        )

    rows = []
    for label, properties in (("valid", GOOD), ("invalid", BAD)):
        make = command(properties)
        # A fresh command each call: the decode of its raw properties is part of the cost.
        build = per_call(lambda new: new(), make, events)
        checked = per_call(lambda new: plan.check(new()), make, events)
        rows.append(("jsonschema-rs, Plan.check (decode included)", label, checked - build))
        rows.append(
            (
                "jsonschema-rs, is_valid alone",
                label,
                per_call(plan.events["Order Completed"].is_valid, properties, events),
            )
        )
    try:
        import jsonschema

        validator = jsonschema.validators.validator_for(schema)(schema)
        for label, properties in (("valid", GOOD), ("invalid", BAD)):
            rows.append(
                (
                    "jsonschema, iter_errors",
                    label,
                    per_call(
                        lambda p: list(validator.iter_errors(p)), properties, max(200, events // 50)
                    ),
                )
            )
    except ImportError:
        pass
    try:
        import fastjsonschema

        compiled = fastjsonschema.compile(schema)

        def fast(p: dict) -> None:
            with contextlib.suppress(fastjsonschema.JsonSchemaException):
                compiled(p)

        for label, properties in (("valid", GOOD), ("invalid", BAD)):
            rows.append(("fastjsonschema", label, per_call(fast, properties, events)))
    except ImportError:
        pass
    return rows


def batch_body(n: int, start: int) -> bytes:
    return msgspec.json.encode(
        {
            "batch": [
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": f"user-{i % 97}",
                    "messageId": f"bench-{start + i}",
                    "properties": GOOD,
                }
                for i in range(n)
            ]
        }
    )


async def edge_cpu(variant: str, plan: Path, events: int) -> float:
    """Server CPU µs per event for ``events`` events through the app, one variant."""
    import falcon.testing

    from eventrouter import config as config_module
    from eventrouter.app import create_app

    data = Path(tempfile.mkdtemp(prefix="eventrouter-bench-quality-"))
    raw: dict[str, Any] = {
        "sources": [{"name": "shop", "write_key": "k"}],
        "admin": {"token": "bench-token-not-secret-0123456789"},
    }
    options: dict[str, Any] = {}
    if variant in ("reject", "drop"):
        text = plan.read_text().replace('on_violation = "drop"', f'on_violation = "{variant}"')
        variant_plan = data / "plan.toml"
        variant_plan.write_text(text)
        options["plans"] = {"shop": str(variant_plan)}
    if variant == "catalogue":
        options["catalogue"] = True
    if options:
        raw["plugins"] = {"options": {"quality": options}}
    config = config_module.parse(raw, "bench.toml", {"EVENTROUTER_DATA_DIR": str(data)})
    app = create_app(config)
    headers = {"Authorization": "Basic aw==", "Content-Type": "application/json"}  # "k:"
    per_request = 100
    bodies = [batch_body(per_request, i * per_request) for i in range(events // per_request)]
    async with falcon.testing.ASGIConductor(app) as conductor:
        warm = await conductor.simulate_post(
            "/v1/batch", body=batch_body(10, -100), headers=headers
        )
        assert warm.status_code == 200, warm.text
        started = time.process_time()
        for body in bodies:
            result = await conductor.simulate_post("/v1/batch", body=body, headers=headers)
            assert result.status_code == 200, result.text
        spent = time.process_time() - started
    return spent / (len(bodies) * per_request) * 1e6


EDGE_VARIANTS = ("no plan", "reject", "drop", "catalogue")


def measure(events: int, rounds: int) -> tuple[list[tuple[str, str, float]], dict[str, float]]:
    """The validator rows and the edge's median CPU µs per event by variant."""
    os.environ.setdefault("EVENTROUTER_LOG_LEVEL", "WARNING")
    directory = Path(tempfile.mkdtemp(prefix="eventrouter-bench-quality-"))
    rows = validators(events, directory)
    plan = example_plan(directory)
    figures: dict[str, list[float]] = {v: [] for v in EDGE_VARIANTS}
    for _ in range(rounds):
        for variant in EDGE_VARIANTS:
            figures[variant].append(asyncio.run(edge_cpu(variant, plan, events)))
    return rows, {v: statistics.median(f) for v, f in figures.items()}


def report(rows: list[tuple[str, str, float]], edge: dict[str, float]) -> list[str]:
    lines = ["| validator | event | µs per event |", "| --- | --- | --- |"]
    lines += [f"| {name} | {label} | {micros:.2f} |" for name, label, micros in rows]
    base = edge["no plan"]
    lines += [
        "",
        "| edge, POST /v1/batch of 100 | server CPU µs per event (median) | vs no plan |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {v} | {m:.1f} | {m - base:+.1f} |" for v, m in edge.items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print("\n".join(report(*measure(args.events, args.rounds))))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
