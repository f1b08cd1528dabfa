"""The edge's per-event steps counted in CPU instructions (valgrind's callgrind), not timed.

bench/floor.py times the same steps in µs; on a machine that other processes share, its
figures move with the load (the same code read 5.7 and 9.5 µs within minutes). An
instruction count does not: callgrind runs the steps on a simulated CPU and counts every
instruction the process executes, so the figure repeats to within a fraction of a
percent whatever else runs, and a change of a few per cent in a step is visible.

For each step, a child process (run under ``valgrind --tool=callgrind``) runs the step
``N`` times, then ``3N`` times, on the ingest benchmark's ``/v1/batch`` body (100
``Product Viewed`` events of ~800 bytes), and callgrind dumps its counters between the
runs (``--dump-before=getppid``: the child calls ``os.getppid()`` as the marker). The
difference between the two runs, divided by ``2N`` times the events per run, is the
step's instructions per event, with the warm-up and the process's start cancelled out.

    .venv/bin/python bench/steps_callgrind.py [--reps 10] [--tree DIR ...] [--pure] [--json FILE]
    .venv/bin/python bench/steps_callgrind.py --context     # the ways of handling context

``--tree DIR`` (repeatable) counts the ``eventrouter`` of another checkout instead of
this one's (e.g. ``git worktree add --detach /tmp/base REF``): its folders are copied
into a temporary package the child imports first. ``--pure`` also counts this tree with
``EVENTROUTER_PURE_PYTHON=1`` (the scanner's pure-Python fallback, router_core/scan.py).
Needs ``valgrind`` (Debian's package); about a minute per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import msgspec

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
#: The repository folders installed under the ``eventrouter`` name (setup.cfg's
#: package_dir): the top-level package, then its subpackages.
PACKAGE_DIRS = {"": "router_core", "admin": "admin", "plugins": "plugins", "sinks": "sinks",
                "snippet": "snippet"}  # fmt: skip
#: Set for a child that counts another checkout (``--tree``).
TREE_ENV = "STEPS_CALLGRIND_TREE"
#: server.max_json_depth and server.max_json_keys, their defaults (as bench/floor.py).
MAX_DEPTH, MAX_KEYS = 64, 10_000
STEPS = (
    "structure limits and overflow scan of the body (scan.scan_body, or the two pure scans)",
    "decode the envelope (items left raw)",
    "typed decode of each item (RawDecoder.decode)",
    "normalise (normalise.to_command)",
    "encode for the broker (encode_many)",
)

#: ``--context``: what handling an event's ``context`` costs now (a dict of raw values,
#: encoded again with ``ip``) against the alternative issue 20's notes proposed (kept as
#: text, probed for ``ip``/``sessionId``/``traits`` by a small Struct, ``ip`` spliced in).
CONTEXT_STEPS = (
    "decode context as a dict of raw values (as the raw twin does)",
    "decode context as raw text (msgspec.Raw: skipped over)",
    "probe the raw text for ip, sessionId, traits (three-field Struct)",
    "encode the dict with ip added (as to_command does)",
    "splice ip into the raw text",
)


def context_calls() -> list:
    """The calls of :data:`CONTEXT_STEPS`, each over the 100 contexts of the batch body."""
    from ingest import make_scenarios

    from eventrouter.events import model

    body = make_scenarios(datetime.now(UTC))[1].body
    items = [bytes(raw) for raw in model.BATCH_DECODER.decode(body).batch]
    contexts = [msgspec.json.encode(msgspec.json.decode(item)["context"]) for item in items]
    wrapped = [b'{"context":' + context + b"}" for context in contexts]

    class AsDict(msgspec.Struct):
        context: dict[str, msgspec.Raw] | None = None

    class AsRaw(msgspec.Struct):
        context: msgspec.Raw = None

    class Probe(msgspec.Struct):
        ip: msgspec.Raw = msgspec.UNSET
        sessionId: msgspec.Raw = msgspec.UNSET  # the JSON key
        traits: msgspec.Raw = msgspec.UNSET

    as_dict = msgspec.json.Decoder(AsDict).decode
    as_raw = msgspec.json.Decoder(AsRaw).decode
    probe = msgspec.json.Decoder(Probe).decode
    encode = msgspec.json.Encoder().encode
    dicts = [as_dict(text).context for text in wrapped]
    for context in dicts:
        context["ip"] = "127.0.0.1"
    return [
        lambda: [as_dict(text) for text in wrapped],
        lambda: [as_raw(text) for text in wrapped],
        lambda: [probe(context) for context in contexts],
        lambda: [encode(context) for context in dicts],
        lambda: [context[:-1] + b',"ip":"127.0.0.1"}' for context in contexts],
    ]


def child(reps: int, context: bool = False) -> None:
    """Run each step ``reps`` then ``3 * reps`` times between markers (under callgrind)."""
    if os.environ.get(TREE_ENV):
        # Another checkout's package, first on PYTHONPATH: the venv's editable finder
        # would still supply this tree's modules that checkout lacks (eventrouter.scan).
        sys.meta_path = [f for f in sys.meta_path if "Editable" not in repr(f)]
    sys.path.insert(0, str(BENCH_DIR))
    from ingest import BATCH_SIZE, make_scenarios

    from eventrouter.edge import limits
    from eventrouter.events import model
    from eventrouter.events.commands import encode_many
    from eventrouter.events.normalise import Arrival, to_command

    body = make_scenarios(datetime.now(UTC))[1].body
    items = model.BATCH_DECODER.decode(body).batch
    messages = [model.ANY_DECODER.decode(raw, numbers_checked=True) for raw in items]
    env = Arrival(received_at=datetime.now(UTC), source="default", ip="127.0.0.1")
    commands = [to_command(message, env) for message in messages]
    decode = model.ANY_DECODER.decode
    try:
        from eventrouter import scan
    except ImportError:  # a tree before the compiled scanner: the two pure-Python scans
        scan = None

    def scans() -> bool:
        # As BatchResource runs them: one pass, then the exact check when not certain.
        if scan is None:
            limits.check_batch_structure(body, items, MAX_DEPTH, MAX_KEYS)
            return model.may_overflow(body)
        within, overflow = scan.scan_body(body, MAX_DEPTH, MAX_KEYS)
        if not within:
            limits.check_batch_structure(body, items, MAX_DEPTH, MAX_KEYS)
        return overflow

    calls = [
        scans,
        lambda: model.BATCH_DECODER.decode(body),
        lambda: [decode(raw, numbers_checked=True) for raw in items],
        lambda: [to_command(message, env) for message in messages],
        lambda: encode_many(commands),
    ]
    assert len(calls) == len(STEPS) and len(items) == BATCH_SIZE
    if context:
        calls = context_calls()
    for call in calls:
        call()  # warm: caches, the message id pool, the allocator's arenas
    for call in calls:
        for count in (reps, 3 * reps):
            os.getppid()  # the marker: callgrind dumps its counters here
            for _ in range(count):
                call()
    os.getppid()


def eventrouter_of(tree: Path, into: Path) -> Path:
    """A directory holding ``tree``'s package as ``eventrouter`` (setup.cfg's layout),
    for PYTHONPATH. A compiled module in ``tree`` (the scanner) comes along as built."""
    package = into / "eventrouter"
    shutil.copytree(tree / PACKAGE_DIRS[""], package, symlinks=True)
    for name, folder in PACKAGE_DIRS.items():
        if name:
            shutil.copytree(tree / folder, package / name, symlinks=True, dirs_exist_ok=True)
    return into


def callgrind_parts(
    argv: list[str], work: Path, env: dict[str, str] | None = None
) -> dict[int, int]:
    """Run ``python argv...`` under callgrind, its counters dumped each time the child
    calls ``os.getppid()`` (the marker between its runs): instructions of each part,
    numbered from 1. The dump files in ``work`` are removed."""
    out = work / "callgrind.out"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         "--dump-before=getppid", sys.executable, *argv],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    totals = {}
    for path in work.glob("callgrind.out.*"):
        part = int(path.name.rsplit(".", 1)[1])
        for line in path.read_text().splitlines():
            if line.startswith("summary:"):
                totals[part] = int(line.split()[1])
        path.unlink()
    out.unlink(missing_ok=True)
    return totals


def count(
    reps: int, env: dict[str, str], work: Path, steps: tuple[str, ...] = STEPS
) -> list[float]:
    """Instructions per event of each step, from one child under callgrind."""
    mode = ["--context"] if steps is CONTEXT_STEPS else []
    totals = callgrind_parts([__file__, "--child", "--reps", str(reps), *mode], work, env)
    # Part 1 is the start and the warm-up; then each step's N run, then its 3N run.
    events = 2 * reps * 100
    return [(totals[3 + 2 * step] - totals[2 + 2 * step]) / events for step in range(len(steps))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="N: batches in the short run [10]")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="count another checkout's eventrouter (repeatable)")  # fmt: skip
    parser.add_argument("--pure", action="store_true",
                        help="also count this tree with EVENTROUTER_PURE_PYTHON=1")  # fmt: skip
    parser.add_argument("--context", action="store_true",
                        help="count the ways of handling context (CONTEXT_STEPS)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.reps, args.context)
        return 0
    steps = CONTEXT_STEPS if args.context else STEPS
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    base_env = {**os.environ, "PYTHONHASHSEED": "0"}
    base_env.pop("EVENTROUTER_PURE_PYTHON", None)
    columns: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="steps-callgrind-") as tmp:
        work = Path(tmp)
        for tree in args.tree:
            path = eventrouter_of(tree.resolve(), work / f"tree{len(columns)}")
            env = {**base_env, "PYTHONPATH": str(path), TREE_ENV: "1"}
            columns[str(tree)] = count(args.reps, env, work, steps)
        columns["this tree"] = count(args.reps, base_env, work, steps)
        if args.pure:
            env = {**base_env, "EVENTROUTER_PURE_PYTHON": "1"}
            columns["this tree, EVENTROUTER_PURE_PYTHON=1"] = count(args.reps, env, work, steps)
    names = list(columns)
    print("| step | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for row, step in enumerate(steps):
        print(f"| {step} | " + " | ".join(f"{columns[n][row]:,.0f}" for n in names) + " |")
    sums = [sum(columns[n]) for n in names]
    print("| **all of the above** | " + " | ".join(f"**{s:,.0f}**" for s in sums) + " |")
    print(f"\ninstructions per event; N = {args.reps} batches of 100 events (then 3N)")
    if args.json:
        args.json.write_text(json.dumps({"reps": args.reps, "steps": steps, "columns": columns}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
