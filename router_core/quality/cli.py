"""``eventrouter violations`` and ``eventrouter plan`` (docs/data-quality.md).

- ``violations list``: the events a plan dropped, with their violations;
- ``violations replay``: ingest them again through the edge's pipeline once the plan is
  fixed (Snowplow's failed-event recovery). Only the events the plan in force now
  accepts are sent; each is sent once, and an event the store holds already (same
  source and message id: a replay run before) is skipped, so a replay stores each
  dropped event exactly once, whatever the store's indexes;
- ``plan draft``: the event catalogue of a source turned into a plan to edit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from eventrouter import config as config_module
from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.config import Config, ConfigError, parse_duration
from eventrouter.events.commands import decode
from eventrouter.quality.plans import ALLOW, options_of, plan_locations, read_plan
from eventrouter.store.query import EventStore

#: Rejected events read per page during a replay.
PAGE = 500
_JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_since(value: str) -> datetime:
    """``--since``: an ISO 8601 time (UTC unless it says otherwise) or a duration back
    from now (``24h``, ``7d``... as config durations)."""
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if text.endswith("d") and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(days=int(text[:-1]))
    try:
        return datetime.now(UTC) - timedelta(seconds=float(parse_duration(text)))
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"--since {value!r}: an ISO 8601 time or a duration such as 24h or 7d"
        ) from None


def plan_lines(config: Config) -> list[str]:
    """What ``eventrouter config check`` says of the quality plugin: each plan, loaded
    and compiled, and the catalogue. Nothing without either.

    :raises ConfigError: a bad option or plan, naming its file and key."""
    options = options_of(config)
    lines = []
    for source, path in plan_locations(config, options).items():
        plan = read_plan(source, path)
        lines.append(
            f"{source}: {path} (version {plan.version}), on_violation {plan.on_violation}, "
            f"{len(plan.events)} event(s), unplanned {plan.unplanned}"
        )
    if options.catalogue:
        lines.append(f"catalogue: on, sample {options.catalogue_sample:g}")
    return lines


def _tables(config: Config) -> tuple[Bus, Any]:
    bus = Bus(config, make_plugin_manager(config))
    sink = bus.store_sink()
    tables = sink.store().quality_tables() if sink is not None else None
    if tables is None:
        raise ConfigError(
            config.path,
            "admin.store",
            "no store keeps the quality tables (sqlite, postgres, clickhouse)",
        )
    return bus, tables


def _check_source(config: Config, source: str | None) -> None:
    if source is None:
        return
    known = {s.name for s in config.sources} or {"default"}
    if source not in known:
        raise ConfigError(config.path, "sources", f"no source named {source!r}")


def cmd_list(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    _check_source(config, args.source)
    _, tables = _tables(config)
    try:
        rows = tables.rejected(args.source, args.since, args.limit)
    finally:
        tables.close()
    if args.json:
        for row in rows:
            print(
                json.dumps(
                    {
                        "source": row.source,
                        "message_id": row.message_id,
                        "type": row.type,
                        "name": row.name,
                        "rejected_at": row.rejected_at.isoformat(),
                        "plan_version": row.plan_version,
                        "violations": json.loads(row.violations),
                    }
                )
            )
        return 0
    for row in rows:
        violations = "; ".join(
            f"{v['path']}: {v['rule']}: {v['message']}" for v in json.loads(row.violations)
        )
        # repr(): a name is the client's text, control characters and all.
        print(
            f"{row.rejected_at:%Y-%m-%dT%H:%M:%SZ} {row.source} {row.message_id!r} "
            f"{row.type} {row.name!r}: {violations}"
        )
    print(f"{len(rows)} dropped event(s)", file=sys.stderr)
    return 0


class ReplayResult:
    def __init__(self) -> None:
        self.sent = 0
        self.already_stored = 0
        self.still_breaking = 0
        self.refused = 0


async def replay(
    config: Config, source: str | None, since: datetime | None, dry_run: bool
) -> ReplayResult:
    """Send the dropped events the plans in force now accept through an edge bus (its
    pipeline: dedup, the plan stage, scrubbing...; embedded mode: into the sinks; queue
    mode: to the broker)."""
    options = options_of(config)
    plans = {s: read_plan(s, path) for s, path in plan_locations(config, options).items()}
    bus, tables = _tables(config)
    store = EventStore(bus.store_sink().store())
    result = ReplayResult()
    if not dry_run:
        await bus.start()
    try:
        offset = 0
        while True:
            rows = await asyncio.to_thread(tables.rejected, source, since, PAGE, offset)
            if not rows:
                break
            offset += len(rows)
            batch = []
            for row in rows:
                command = decode(row.command.encode())
                if await asyncio.to_thread(store.get, command.message_id, command.source):
                    result.already_stored += 1
                    continue
                plan = plans.get(command.source)
                if plan is not None and plan.on_violation != ALLOW and plan.check(command):
                    result.still_breaking += 1
                    continue
                batch.append(command)
            if not batch or dry_run:
                result.sent += len(batch)
                continue
            refused = bus.admit(batch) or {}
            result.refused += len(refused)
            batch = [c for i, c in enumerate(batch) if i not in refused]
            if batch:
                await bus.dispatch(batch)
                result.sent += len(batch)
    finally:
        tables.close()
        store.close()
        if not dry_run:
            await bus.stop()
    return result


def cmd_replay(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    _check_source(config, args.source)
    result = asyncio.run(replay(config, args.source, args.since, args.dry_run))
    verb = "would send" if args.dry_run else "sent"
    print(
        f"{verb} {result.sent} event(s); {result.already_stored} stored already (skipped); "
        f"{result.still_breaking + result.refused} still break the plan (kept for later)"
    )
    return 0


# -- plan draft --------------------------------------------------------------------------
def toml_key(key: str) -> str:
    """``key`` as a TOML key: bare when it may be, else quoted."""
    return key if _BARE_KEY.match(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (inline tables and arrays; strings as JSON, which TOML
    basic strings accept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _schema_type(types: set[str]) -> Any:
    if "integer" in types and "number" in types:
        types = types - {"integer"}
    ordered = [t for t in _JSON_TYPES if t in types]
    return ordered[0] if len(ordered) == 1 else ordered


def draft_schema(paths: dict[str, dict[str, int]], volume: int) -> dict[str, Any]:
    """A JSON Schema for an object from the catalogue's ``{path: {type: count}}`` of one
    entry seen ``volume`` times: each path its observed types; a top-level key seen in
    every event required."""
    root: dict[str, Any] = {"type": "object", "properties": {}}

    def node_for(path: str) -> dict[str, Any] | None:
        node = root
        parts = path.split(".")
        for part in parts[:-1]:
            is_array = part.endswith("[]")
            key = part[:-2] if is_array else part
            child = node.setdefault("properties", {}).get(key)
            if child is None:
                return None
            if is_array:
                child = child.setdefault("items", {"type": "object"})
            node = child
        return node

    for path in sorted(paths, key=lambda p: (p.count(".") + p.count("[]"), p)):
        types = set(paths[path])
        if path.endswith("[]"):
            parent = node_for(path[:-2])
            key = path[:-2].split(".")[-1]
            holder = parent.get("properties", {}).get(key) if parent is not None else None
            if holder is not None:
                holder["items"] = {"type": _schema_type(types)}
            continue
        parent = node_for(path)
        if parent is None:
            continue
        key = path.split(".")[-1]
        parent.setdefault("properties", {})[key] = {"type": _schema_type(types)}
    required = sorted(
        p
        for p, types in paths.items()
        if "." not in p and "[]" not in p and sum(types.values()) >= volume
    )
    if required:
        root["required"] = required
    return root


def draft_plan(catalogue: list[Any], source: str) -> str:
    """The TOML text of a draft plan for ``source`` from its catalogue rows."""
    entries: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    volumes: dict[tuple[str, str], int] = {}
    for row in catalogue:
        if row.source != source or row.kind not in ("track", "identify", "group"):
            continue
        key = (row.kind, row.name)
        if row.path == "":
            volumes[key] = volumes.get(key, 0) + row.count
            continue
        entries.setdefault(key, {}).setdefault(row.path, {})[row.json_type] = row.count
    lines = [
        f"# A draft tracking plan for source {json.dumps(source)}, from the event catalogue",
        "# (eventrouter plan draft). Edit it: tighten types, add formats and ranges, then",
        '# set on_violation to "drop" or "reject" (docs/data-quality.md).',
        'on_violation = "allow"',
        'unplanned = "allow"',
    ]
    for (kind, name), volume in sorted(volumes.items()):
        schema = draft_schema(entries.get((kind, name), {}), volume)
        header = f"[events.{json.dumps(name)}]" if kind == "track" else f"[{kind}]"
        lines += ["", f"# seen {volume} time(s)", header]
        for key, value in schema.items():
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def cmd_draft(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    _check_source(config, args.source)
    _, tables = _tables(config)
    try:
        rows = tables.catalogue(args.source, None)
    finally:
        tables.close()
    text = draft_plan(rows, args.source)
    if args.output:
        with open(args.output, "x", encoding="utf-8") as file:  # never overwrite a plan
            file.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_parsers(commands: Any) -> None:
    """The ``violations`` and ``plan`` subcommands, added to the CLI's subparsers."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="TOML config file (default: $EVENTROUTER_CONFIG)")

    violations = commands.add_parser(
        "violations", help="list or replay events a tracking plan dropped (docs/data-quality.md)"
    )
    actions = violations.add_subparsers(dest="violations_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the dropped events and why")
    common(listing)
    listing.add_argument("--source", metavar="S", help="only this source")
    listing.add_argument(
        "--since", type=parse_since, metavar="T", help="ISO 8601 time or 24h, 7d..."
    )
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_list)
    again = actions.add_parser(
        "replay", help="ingest dropped events again, those the plan in force now accepts"
    )
    common(again)
    again.add_argument("--source", metavar="S", required=True)
    again.add_argument("--since", type=parse_since, metavar="T", help="ISO 8601 time or 24h, 7d...")
    again.add_argument("--dry-run", action="store_true", help="count, send nothing")
    again.set_defaults(func=cmd_replay)

    plan = commands.add_parser("plan", help="tracking plan tools (docs/data-quality.md)")
    plan_actions = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")
    draft = plan_actions.add_parser("draft", help="a draft plan from the event catalogue")
    common(draft)
    draft.add_argument("--source", metavar="S", required=True)
    draft.add_argument("--output", "-o", metavar="FILE", help="write here (never overwritten)")
    draft.set_defaults(func=cmd_draft)
