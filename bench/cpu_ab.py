"""CPU per event, before and after: ``eventrouter serve`` of a base git ref and of this
tree, in turns, each driven by the same wrk load, on a busy machine too.

    .venv/bin/python bench/cpu_ab.py --base REF [--head REF] [--rounds 3] [--duration 10]
                                     [--workers 1] [--connections 32] [--only single|batch]
                                     [--fsync]

Requests per second measure the machine as much as the code when other processes run
beside the benchmark (two rounds of the bare endpoint read 10.8k and 18.1k req/s in one
``make bench BASE=`` run). What the request path costs shows better in the CPU seconds
the server's processes spend per event answered 200, and, for the embedded store, in the
events each SQLite commit carries (from ``/health``): both move far less with the load.

The base tree and its venv come from bench/compare.py (a temporary git worktree, a venv
cached by commit). Each round starts the base's ``eventrouter serve`` (embedded mode,
a fresh data directory), warms it up, runs wrk (bench/post.lua, bench/ingest.py's bodies)
for each scenario, reads the server's CPU from /proc around the measured run and its
sink stats from ``/health``, stops it by its process group; then the same for this tree.
Only the CLI is used, so any ref with ``eventrouter serve`` works. ``--head REF`` puts
another ref in place of this tree (checked out and given a venv the same way), to
measure one step of a history. The table gives each
side's median and every round, and head / base. Everything binds to 127.0.0.1; written
to ``bench/results/cpu-ab-latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import compare
import ingest

RESULTS = ingest.RESULTS_DIR / "cpu-ab-latest.md"


@dataclass
class Figures:
    """One side's figures for one scenario, a value per round."""

    cpu_us: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    per_commit: list[float] = field(default_factory=list)


def server(tree: compare.Tree, work: Path, args: argparse.Namespace) -> ingest.Server:
    """``eventrouter serve`` of ``tree`` in embedded mode, in a fresh data directory."""
    port = ingest.free_port()
    data = Path(tempfile.mkdtemp(prefix=f"{tree.side}-", dir=work))
    env = compare.environment(tree.python)
    env.pop("EVENTROUTER_CONFIG", None)
    env.pop("EVENTROUTER_PORT", None)
    env["EVENTROUTER_DATA_DIR"] = str(data / "data")
    env["EVENTROUTER_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    argv = [str(tree.python.parent / "eventrouter"), "serve", "--host", ingest.HOST]
    argv += ["--port", str(port), "--workers", str(args.workers)]
    if args.fsync:
        config = data / "fsync.toml"
        config.write_text(
            '[sinks.local]\ntype = "sqlite"\nurl = "sqlite:///${EVENTROUTER_DATA_DIR}/events.db"\n'
            'synchronous = "full"\n'
        )
        argv += ["--config", str(config)]
    return ingest.Server(
        f"{tree.side}",
        argv,
        port=port,
        cwd=data,
        env=env,
        ready=urllib.request.Request(f"http://{ingest.HOST}:{port}/health"),
        log_path=work / f"{tree.side}.log",
        db_path=data / "data" / "events.db",
    )


def sink_stats(srv: ingest.Server) -> dict:
    """``sink:local``'s stats from ``/health`` ({} when the tree reports none)."""
    try:
        with urllib.request.urlopen(ingest.health_request(srv), timeout=10) as response:
            return json.load(response)["components"]["sink:local"]["stats"]
    except (OSError, ValueError, KeyError):
        return {}


def one_round(
    tree: compare.Tree,
    scenarios: list[ingest.Scenario],
    bodies: dict[str, Path],
    work: Path,
    args: argparse.Namespace,
    figures: dict[tuple[str, str], Figures],
) -> None:
    with server(tree, work, args) as srv:
        for scenario in scenarios:
            before = sink_stats(srv)
            m, _ = ingest.measure(srv, scenario, bodies[scenario.name], args)
            after = sink_stats(srv)
            answered = m.acknowledged_events
            f = figures.setdefault((tree.side, scenario.name), Figures())
            f.cpu_us.append(m.server_cpu / answered * 1e6 if answered else float("nan"))
            f.rate.append(answered / m.wrk.seconds)
            commits = after.get("commits", 0) - before.get("commits", 0)
            events = after.get("committed_events", 0) - before.get("committed_events", 0)
            if commits > 0:  # one worker's view: /health answers from one of them
                f.per_commit.append(events / commits)


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else None


def table(figures: dict[tuple[str, str], Figures], scenarios: list[str]) -> list[str]:
    lines = [
        "| scenario | figure | base | head | head / base | base, each round | head, each round |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name in scenarios:
        base, head = figures.get(("base", name)), figures.get(("head", name))
        if base is None or head is None:
            continue
        for label, attr, fmt in (
            ("server CPU µs per event", "cpu_us", "{:,.1f}"),
            ("events/s answered 200", "rate", "{:,.0f}"),
            ("events per SQLite commit (one worker)", "per_commit", "{:,.1f}"),
        ):
            b, h = getattr(base, attr), getattr(head, attr)
            mb, mh = _median(b), _median(h)
            if mb is None or mh is None:
                continue
            ratio = f"{mh / mb:.2f}" if mb else ""
            rounds_b = " / ".join(fmt.format(v) for v in b)
            rounds_h = " / ".join(fmt.format(v) for v in h)
            lines.append(
                f"| {name} | {label} | {fmt.format(mb)} | {fmt.format(mh)} | {ratio} "
                f"| {rounds_b} | {rounds_h} |"
            )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git ref of the base tree")
    parser.add_argument("--head", help="git ref of the head tree [this working tree]")
    parser.add_argument("--rounds", type=int, default=3, help="base then head, N times [3]")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured [10]")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds discarded [2]")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections [32]")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads [1]")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers [1]")
    parser.add_argument("--only", choices=("single", "batch"), help="one scenario")
    parser.add_argument("--fsync", action="store_true", help='synchronous = "full"')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        commit = compare.resolve(args.base)
        head_commit = compare.resolve(args.head) if args.head else None
    except RuntimeError:
        print("cpu_ab: --base/--head: not a commit in this repository", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    scenarios = [s for s in ingest.make_scenarios(started) if args.only in (None, s.name)]
    head = compare.Tree("head", compare.REPO_ROOT, Path(sys.executable), "this tree")
    figures: dict[tuple[str, str], Figures] = {}
    load_at_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bodies = ingest.write_bodies(work, scenarios)
        base = compare.prepare_base(stack, args.base, commit)
        if head_commit is not None:
            other = compare.prepare_base(stack, args.head, head_commit)
            head = compare.Tree("head", other.root, other.python, other.label, other.problem)
        for tree in (base, head):
            if tree.python is None:
                print(f"cpu_ab: {tree.side}: {tree.problem}", file=sys.stderr)
                return 1
        for number in range(1, args.rounds + 1):
            for tree in (base, head):
                ingest.log(f"== round {number} of {args.rounds}: {tree.side} ==")
                one_round(tree, scenarios, bodies, work, args, figures)
    head_label = (
        f"`{args.head}` ({head_commit[:12]})"
        if head_commit
        else "this tree at " + compare.git("describe", "--always", "--dirty")
    )
    header = (
        f"`bench/cpu_ab.py --base {args.base}` ({commit[:12]}) on {started:%Y-%m-%d %H:%M} "
        f"UTC against {head_label}: "
        f"{args.rounds} rounds, {args.workers} gunicorn worker(s), wrk -t{args.wrk_threads} "
        f"-c{args.connections} -d{args.duration:g}s, "
        f"{'synchronous = full' if args.fsync else 'embedded defaults'}; load average "
        f"{load_at_start} at the start."
    )
    lines = [header, "", *table(figures, [s.name for s in scenarios])]
    print("\n".join(lines))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(["# CPU per event, before and after", "", *lines]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
