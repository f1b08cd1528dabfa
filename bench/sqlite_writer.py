"""What the SQLite sink's writer costs per event: CPU time, or CPU instructions.

    .venv/bin/python bench/sqlite_writer.py [--events 100000] [--commit 1000]
                                            [--unique-users] [--indexes user_id,event]
    .venv/bin/python bench/sqlite_writer.py --callgrind [--reps 2] [--commit 1000] ...

The embedded edge's writer thread calls ``SQLiteSink.write`` with each group of
requests; this script calls it directly, in commits of ``--commit`` events (bench/sinks.py's
783-byte track events, each commit with message ids of its own), into a fresh database
under /tmp with the sink's defaults (indexes ``user_id`` and ``event``, the hourly
rollup; ``--unique-users`` adds ``users_active``, ``--no-rollups`` keeps none). It
prints one JSON line: events/s, the process's CPU µs per event (the writer and the
sink's checkpoint thread), the bytes the process wrote (``wchar``: WAL, checkpoints) and
the database's bytes per event.

``--callgrind`` counts instead of timing, so that an A/B holds on a busy machine: a
child runs under ``valgrind --tool=callgrind`` (Debian's ``valgrind``), writes five
commits to warm up, then ``--reps`` commits and then ``3 x --reps``, calling
``os.getppid()`` between them as the dump marker (``--dump-before=getppid``, as
bench/steps_callgrind.py does); the difference of the two parts over ``2 x reps x
commit`` events is the instructions per event. The checkpoint thread's work falls in
whichever part it runs in. To compare two trees, run each tree's copy with its own venv
from its root (``git worktree add --detach /tmp/base <ref>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from steps_callgrind import callgrind_parts  # noqa: E402

import eventrouter.sinks.sqlite as sqlite_sink  # noqa: E402
from eventrouter.sinks.sqlite import SQLiteOptions, SQLiteSink  # noqa: E402
from sinks import base_commands, batch_of  # noqa: E402

#: Commits written before anything is measured.
WARM_UP = 5


def make_sink(directory: str, args: argparse.Namespace) -> SQLiteSink:
    if args.no_rollups:  # as bench/rollups.py ingest does: the store keeps no rollup
        sqlite_sink.ensure_rollup = lambda connection, **_: []
    indexes = [name for name in args.indexes.split(",") if name]
    options = SQLiteOptions(
        url=f"sqlite:///{directory}/events.db", indexes=indexes, unique_users=args.unique_users
    )
    sink = SQLiteSink("local", None, options)
    asyncio.run(sink.start(None))
    return sink


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _written() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))


def timed(args: argparse.Namespace) -> dict:
    base = base_commands(args.commit)
    commits = [batch_of(base, number) for number in range(WARM_UP + args.events // args.commit)]
    directory = tempfile.mkdtemp(prefix="bench-sqlite-writer-")
    try:
        sink = make_sink(directory, args)
        for commit in commits[:WARM_UP]:
            sink.write(commit)
        written, cpu, started = _written(), _cpu(), time.perf_counter()
        for commit in commits[WARM_UP:]:
            sink.write(commit)
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        asyncio.run(sink.stop())
        written = _written() - written
        events = len(commits[WARM_UP:]) * args.commit
        size = os.path.getsize(f"{directory}/events.db")
    finally:
        shutil.rmtree(directory)
    return {
        "events": events,
        "commit": args.commit,
        "events_s": round(events / seconds),
        "cpu_us_per_event": round(1e6 * cpu / events, 2),
        "written_bytes_per_event": round(written / events),
        "db_bytes_per_event": round(size / (events + WARM_UP * args.commit)),
    }


def child(args: argparse.Namespace) -> None:
    """The part that runs under callgrind."""
    base = base_commands(args.commit)
    commits = iter([batch_of(base, number) for number in range(WARM_UP + 4 * args.reps)])
    directory = tempfile.mkdtemp(prefix="bench-sqlite-writer-")
    try:
        sink = make_sink(directory, args)
        for _ in range(WARM_UP):
            sink.write(next(commits))
        os.getppid()
        for _ in range(args.reps):
            sink.write(next(commits))
        os.getppid()
        for _ in range(3 * args.reps):
            sink.write(next(commits))
        os.getppid()
        asyncio.run(sink.stop())
    finally:
        shutil.rmtree(directory)


def counted(args: argparse.Namespace) -> dict:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    work = Path(tempfile.mkdtemp(prefix="bench-sqlite-writer-cg-"))
    try:
        options = ["--reps", str(args.reps), "--commit", str(args.commit)]
        options += ["--indexes", args.indexes] + (["--unique-users"] if args.unique_users else [])
        options += ["--no-rollups"] if args.no_rollups else []
        totals = callgrind_parts([__file__, "--child", *options], work)
    finally:
        shutil.rmtree(work)
    events = 2 * args.reps * args.commit
    return {
        "commit": args.commit,
        "instructions_per_event": round((totals[3] - totals[2]) / events),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="timed events [100000]")
    parser.add_argument("--commit", type=int, default=1000, help="events per commit [1000]")
    parser.add_argument("--unique-users", action="store_true", help="keep users_active too")
    parser.add_argument("--indexes", default="user_id,event", help="the sink's indexes")
    parser.add_argument("--no-rollups", action="store_true", help="keep no rollup at all")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument("--reps", type=int, default=2, help="--callgrind: commits, then 3x [2]")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    result = counted(args) if args.callgrind else timed(args)
    options = {"unique_users": args.unique_users, "rollups": not args.no_rollups}
    print(json.dumps({**result, **options, "indexes": args.indexes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
