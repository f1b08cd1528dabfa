"""The ``eventrouter`` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pluggy

from eventrouter import __version__, logs
from eventrouter import config as config_module
from eventrouter.bus.bus import ENTRY_POINT_GROUP, WORKER, Bus, StartFailed, make_plugin_manager
from eventrouter.client import upload as upload_command
from eventrouter.config import Config, ConfigError
from eventrouter.edge.ratelimit import RateLimiter
from eventrouter.privacy import cli as privacy_command
from eventrouter.quality import cli as quality_commands
from eventrouter.queue.broker import BROKER_ERRORS
from eventrouter.redact import redact_url, redact_urls


def _load(path: str | None) -> Config:
    config = config_module.load(path)
    # Building the bus validates every sink's own keys against its type; no I/O happens.
    Bus(config, make_plugin_manager(config))
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    from eventrouter import metrics
    from eventrouter.server import Server, gunicorn_options

    # First: prometheus-client chooses its multiprocess mode when first imported, and
    # the workers inherit this process's modules.
    metrics_dir, owner = metrics.prepare_multiprocess(), os.getpid()
    try:
        return _serve(args, Server, gunicorn_options)
    finally:
        metrics.remove_multiprocess_dir(metrics_dir, owner)


def _with_plugins_dir(config: Config, args: argparse.Namespace) -> Config:
    """``--plugins-dir`` (relative to the working directory) overrides ``plugins_dir``."""
    if getattr(args, "plugins_dir", None):
        config.plugins_dir = os.path.abspath(args.plugins_dir)
    return config


def _serve(args: argparse.Namespace, Server: Any, gunicorn_options: Any) -> int:
    config = _with_plugins_dir(config_module.load(args.config), args)
    Bus(config, make_plugin_manager(config))  # validates every sink's keys; no I/O
    logs.configure(logs.chosen_format(config.server.log_format))
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
        config_module.check_metrics_bind(config, config.path)
    # Generated here, before the fork: the workers inherit this config, so they all
    # accept the same token.
    if config_module.ensure_admin_token(config):
        print(
            f"eventrouter: no admin token configured; generated for this run: {config.admin.token}",
            file=sys.stderr,
            flush=True,
        )
    Server(config, gunicorn_options(config, workers=args.workers)).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from eventrouter.queue.worker import Worker

    config = _with_plugins_dir(config_module.load(args.config), args)
    logs.configure(logs.chosen_format(config.server.log_format))
    if args.metrics_port is not None:
        from eventrouter import metrics

        metrics.serve_worker_metrics(args.metrics_port, args.metrics_host)
    try:
        Worker(config, sinks=args.sink or None).serve_forever()
    except StartFailed as exc:
        print(f"eventrouter: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from eventrouter.queue import deadletters

    config = _load(args.config)
    try:
        if args.action == "list":
            letters = deadletters.list_dead_letters(config, args.sink, args.limit)
        else:
            letters = deadletters.replay(config, args.sink, args.limit)
    except (*BROKER_ERRORS, *_kafka_errors(config)) as exc:
        where = redact_urls(config.queue.url)
        print(f"eventrouter: broker unreachable at {where}: {exc}", file=sys.stderr)
        return 3
    if args.json:
        sys.stdout.write(msgspec.json.encode(letters).decode() + "\n")
    else:
        for i, letter in enumerate(letters, 1):
            more = " ..." if len(letter.message_ids) > 3 else ""
            ids = ", ".join(letter.message_ids[:3]) + more
            events = "?" if letter.events is None else letter.events
            print(f"{i:>4}  {letter.dead_lettered_at or '-'}  events={events}  {letter.reason}")
            if ids:
                print(f"      message ids: {ids}")
            if letter.outcome:
                print(f"      {letter.outcome}")
        replayed = sum(letter.outcome == "replayed" for letter in letters)
        summary = f"{len(letters)} dead letter(s) for sink {args.sink!r}"
        if args.action == "replay":
            summary += f": {replayed} replayed, {len(letters) - replayed} kept"
        print(summary)
    if args.action == "replay" and any(letter.outcome != "replayed" for letter in letters):
        return 1
    return 0


def _kafka_errors(config: Config) -> tuple[type[BaseException], ...]:
    """What a kafka:// broker that is down raises (confluent-kafka loads only then)."""
    if config.queue is None or config.queue.transport != "kafka":
        return ()
    from eventrouter.queue.kafka_transport import KAFKA_ERRORS, KafkaDeliveryError

    return (*KAFKA_ERRORS, KafkaDeliveryError)


def cmd_replay(args: argparse.Namespace) -> int:
    """``eventrouter replay --sink NAME --from TIME|OFFSET``: Kafka's retained log again."""
    config = _load(args.config)
    config_module.require_kafka_queue(config)
    from eventrouter.queue import kafka_log

    try:
        start = kafka_log.parse_start(args.start)
    except ValueError as exc:
        print(f"eventrouter: {exc}", file=sys.stderr)
        return 2
    try:
        result = kafka_log.replay_from(config, args.sink, start)
    except _kafka_errors(config) as exc:
        where = redact_urls(config.queue.url)
        print(f"eventrouter: broker unreachable at {where}: {exc}", file=sys.stderr)
        return 3
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        skipped = result.undecodable
        print(
            f"replayed {result.events} event(s) in {result.records} record(s) to sink "
            f"{args.sink!r} from {args.start}"
            + (f"; {skipped} undecodable record(s) skipped" if skipped else "")
        )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the schema of every configured sink (or of ``--sink``)."""
    config = config_module.load(args.config)
    bus = Bus(config, make_plugin_manager(config))
    names = args.sink or list(bus.sinks)
    for name in names:
        if name not in bus.sinks:
            raise ConfigError(config.path, "sinks", f"no sink named {name!r}")
    for name in names:
        sink = bus.sinks[name]
        done = sink.migrate()
        print(f"{name} ({sink.config.type}): {done or 'nothing to migrate'}")
    return 0


def _disabled_row(name: str) -> dict[str, Any]:
    """A plugin blocked by ``[plugins] disabled``: never imported, so only its entry point
    (if any) tells where it comes from."""
    entry_point = next(
        iter(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)), None
    )
    dist = entry_point.dist if entry_point is not None else None
    return {
        "name": name,
        "distribution": dist.name if dist else None,
        "version": dist.version if dist else None,
        "hooks": [],
        "sink_types": [],
        "disabled": True,
    }


def _plugin_rows(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    distributions = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None or pm.is_blocked(name):
            rows.append(_disabled_row(name))
            continue
        dist = distributions.get(id(plugin))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        sink_types = []
        if hasattr(plugin, "eventrouter_sink_types"):
            sink_types = sorted(plugin.eventrouter_sink_types() or {})
        rows.append(
            {
                "name": name,
                "distribution": dist.project_name if dist else None,
                "version": dist.version if dist else None,
                "hooks": hooks,
                "sink_types": sink_types,
                "disabled": False,
            }
        )
    return rows


def cmd_plugins(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    rows = _plugin_rows(make_plugin_manager(config))
    if args.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'plugin':<{width}}  {'distribution':<24} {'version':<10} hooks")
    for r in rows:
        dist = "(disabled)" if r["disabled"] else r["distribution"] or "-"
        version = r["version"] or "-"
        extra = f"  [sink types: {', '.join(r['sink_types'])}]" if r["sink_types"] else ""
        print(f"{r['name']:<{width}}  {dist:<24} {version:<10} {', '.join(r['hooks'])}{extra}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _load(args.file)
    plans = quality_commands.plan_lines(config)  # a bad plan stops here, named
    sinks = ", ".join(f"{name} ({sink.type})" for name, sink in config.sinks.items())
    sources = ", ".join(s.name for s in config.sources) or "none (open ingestion)"
    print(f"{args.file}: OK")
    print(f"  sources: {sources}")
    print(f"  sinks:   {sinks}")
    if config.queue is not None:
        print(f"  queue:   {redact_urls(config.queue.url)} (sinks run in `eventrouter worker`)")
    else:
        print("  queue:   none (embedded: sinks run in the server)")
    if config.dedup is not None:
        print(f"  dedup:   {redact_url(config.dedup.url)}, window {config.dedup.window:g}s")
    for line in _limit_lines(config):
        print(f"  limits:  {line}")
    for line in _privacy_lines(config):
        print(f"  privacy: {line}")
    for line in _admin_lines(config):
        print(f"  admin:   {line}")
    for line in plans:
        print(f"  quality: {line}")
    if not args.connect:
        return 0
    results = asyncio.run(_try_sinks(config))
    for line, _ in results:
        print(f"  connect: {line}")
    return 1 if any(not ok for _, ok in results) else 0


async def _call(method: Any, *args: Any) -> Any:
    """A sink method, plain (in a thread: it may block) or ``async``."""
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    result = await asyncio.to_thread(method, *args)
    return await result if inspect.isawaitable(result) else result


async def _try_sinks(config: Config) -> list[tuple[str, bool]]:
    """``config check --connect``: start and stop each configured sink on its own, as a
    worker would (every sink runs), and say what happened to each."""
    bus = Bus(config, make_plugin_manager(config), role=WORKER)
    results = []
    for name, sink in bus.sinks.items():
        what = bus.describe_plugin(f"sink:{name}")
        try:
            await _call(sink.start, bus)
        except Exception as exc:
            results.append((f"{what} failed to start: {type(exc).__name__}: {exc}", False))
            continue
        try:
            await _call(sink.stop)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            results.append((f"{what} started, but failed to stop: {error}", False))
            continue
        results.append((f"{what}: started and stopped", True))
    return results


def _rate(limit: Any) -> str:
    return f"{limit.events_per_second:g} events/s, burst {limit.capacity}"


def _limit_lines(config: Any) -> list[str]:
    """The rate limits in force, as the server's limiter resolves them (per source, the
    default, where the buckets live); building it connects to nothing."""
    limiter = RateLimiter.from_config(config)
    if limiter is None:
        return ["none (no source is rate-limited)"]
    lines = [f"{name}: {_rate(limit)}" for name, limit in limiter.limits.items()]
    if limiter.default is not None:
        lines.append(f"every other source: {_rate(limiter.default)}")
    lines.append(f"buckets: {redact_url(limiter.url) if limiter.url else 'per process'}")
    return lines


def _admin_lines(config: Any) -> list[str]:
    """Who sees /health and /metrics, and the sign-in throttle (no token is printed)."""
    server, throttle = config.server, config.admin.throttle
    metrics = server.metrics + (f" on {server.metrics_bind}" if server.metrics_bind else "")
    url = config_module.throttle_redis_url(config)
    client, everyone = throttle.client, throttle.global_
    return [
        f"/health details: {server.health_details}; /metrics: {metrics}",
        f"sign-in throttle: {client.burst} failures then {client.per_minute:g}/min per "
        f"client, {everyone.burst} then {everyone.per_minute:g}/min in total; buckets: "
        + (redact_url(url) if url else "per process"),
    ]


def _privacy_lines(config: Any) -> list[str]:
    """What the edge does to personal data: IPs per source, scrubbed paths."""
    privacy = config.privacy
    own = [f"{s.name} {s.ip}" for s in config.sources if s.ip and s.ip != privacy.ip]
    ip = f"context.ip {privacy.ip}" + (f" ({', '.join(own)})" if own else "")
    scrub = privacy.scrub
    dropped = ", ".join(scrub.drop) or "none"
    hashed = ", ".join(scrub.hash) or "none"
    return [ip, f"scrub: drop {dropped}; hash {hashed}"]


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from eventrouter import scaffold

    taken = {entry.name for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    try:
        root, files = scaffold.new_plugin(args.name, args.kind, Path(args.dir), taken)
    except (scaffold.ScaffoldError, OSError) as exc:
        print(f"eventrouter new-plugin: {exc}", file=sys.stderr)
        return 2
    print(f"created {args.kind} plugin {args.name!r} in {root}:")
    for path in files:
        print(f"  {path.relative_to(root)}")
    print(f"next: cd {root} && pip install -e '.[test]' && pytest")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventrouter", description="Self-hosted, Segment-compatible event router."
    )
    parser.add_argument("--version", action="version", version=f"eventrouter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the ingestion server (gunicorn + uvicorn)")
    serve.add_argument("--config", help="TOML config file (default: $EVENTROUTER_CONFIG)")
    serve.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $EVENTROUTER_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    serve.add_argument(
        "--plugins-dir", metavar="DIR", help="load each DIR/*.py as a plugin (plugins_dir)"
    )
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="consume the queue and feed the sinks")
    worker.add_argument("--config", help="TOML config file (default: $EVENTROUTER_CONFIG)")
    worker.add_argument(
        "--sink",
        action="append",
        metavar="NAME",
        help="consume only this sink's queue (repeatable; default: every sink)",
    )
    worker.add_argument(
        "--plugins-dir", metavar="DIR", help="load each DIR/*.py as a plugin (plugins_dir)"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve this worker's Prometheus metrics on http://HOST:PORT/metrics",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (127.0.0.1)"
    )
    worker.set_defaults(func=cmd_worker)

    migrate = commands.add_parser("migrate", help="create or upgrade the sinks' schemas")
    migrate.add_argument("--config", help="TOML config file (default: $EVENTROUTER_CONFIG)")
    migrate.add_argument("--sink", action="append", metavar="NAME", help="only this sink")
    migrate.set_defaults(func=cmd_migrate)

    dead = commands.add_parser("dead-letters", help="list or replay a sink's dead letters")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("--sink", required=True, metavar="NAME")
    dead.add_argument("--config", help="TOML config file (default: $EVENTROUTER_CONFIG)")
    dead.add_argument("--limit", type=int, help="at most this many messages")
    dead.add_argument("--json", action="store_true", help="print JSON")
    dead.set_defaults(func=cmd_dead_letters)

    replay = commands.add_parser(
        "replay", help="deliver a kafka:// queue's retained events to one sink again"
    )
    replay.add_argument("--sink", required=True, metavar="NAME")
    replay.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="TIME|OFFSET",
        help="an ISO 8601 time (UTC unless it names a zone) or an offset (every partition)",
    )
    replay.add_argument("--config", help="TOML config file (default: $EVENTROUTER_CONFIG)")
    replay.add_argument("--json", action="store_true", help="print JSON")
    replay.set_defaults(func=cmd_replay)

    plugins = commands.add_parser("plugins", help="list discovered plugins and their versions")
    plugins.add_argument("--config", help="TOML config file (for [plugins] disabled)")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=cmd_plugins)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also start and stop each sink (connects to its database, bucket, file...)",
    )
    check.set_defaults(func=cmd_config_check)

    new = commands.add_parser(
        "new-plugin", help="generate a plugin package: a sink type or a pipeline stage"
    )
    new.add_argument("name", help="the plugin's name: lowercase letters, digits, underscores")
    new.add_argument("--kind", choices=["sink", "stage"], required=True)
    new.add_argument("--dir", default=".", help="where to create eventrouter-NAME/ (default: here)")
    new.set_defaults(func=cmd_new_plugin)

    upload_command.add_parser(commands)
    privacy_command.add_parser(commands)
    quality_commands.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logs.configure(logs.chosen_format())
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"eventrouter: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
