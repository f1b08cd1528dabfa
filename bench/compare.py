"""Before and after in one run: bench/all.py at a base git ref and in this working tree,
interleaved round by round, in one table.

    make bench BASE=REF [BENCH_ARGS="--quick --only ingest,sinks"]
    .venv/bin/python bench/compare.py --base REF [--repeat 2] [--band 0.10] [OPTIONS]

OPTIONS are bench/all.py's (``--quick``, ``--only``, ``--duration``, ...); both trees get
the same ones. What it does:

1. **The base tree.** ``git worktree add --detach`` checks the ref out into a temporary
   directory. It gets a venv of its own, made the way its Makefile makes one: ``python -m
   venv``, then ``pip install --require-hashes`` of its ``requirements/build.txt`` and
   ``requirements/test.txt``, then ``pip install --no-deps --no-build-isolation -e .``. A
   ref older than the locks gets this tree's locks instead, so both sides run the same
   third-party versions; the header says which. The venv is cached in
   ``~/.cache/eventrouter-bench/`` (``$XDG_CACHE_HOME``), keyed by the commit, the Python
   version and, when borrowed, the locks' hash. A second run only redoes the editable
   install, which points the venv at the new checkout.
2. **Interleaved rounds.** For ``--repeat N`` rounds (default 2), the base runs, then the
   head. Each tree runs its own bench/all.py with its own interpreter, the given OPTIONS
   and ``--json`` to a temporary file. The base may import its code as ``router_core``
   and the head as ``eventrouter``, so nothing is shared between them: no PYTHONPATH, and
   each venv's ``bin/`` first on PATH. Whatever the machine's pace does during the run, it
   does to both trees alike.
3. **One table.** Each figure gets a row: the base's and the head's median over the
   rounds and each round's value, head / base, and a verdict. "within noise" means the
   ratio is inside the noise band, else "faster" or "slower" (for times, lower is
   faster). The band is the wider of ``--band`` (±10 %) and the spread the base itself
   showed between its rounds, (max - min) / median. A figure that one side could not
   measure is "n/a" (the base) or "failed" (the head), with the reason in the note. The
   table is printed and written to ``bench/results/compare-latest.md``, all of it as JSON
   to ``compare-latest.json``, and each run's full report (bench/all.py's
   ``all-latest.md``) to ``compare-latest/<side>-<round>.md``.
4. **Clean-up.** The worktree is removed however the run ends (a SIGTERM unwinds like
   Ctrl-C). Each bench/all.py stops the servers it started, by their own PIDs or process
   groups, and everything binds to 127.0.0.1.

Exit status: 2 for a bad option or an unknown ref; 1 when a round of either tree failed
(its bench/all.py exited non-zero: an area failed, or the base refused an option) or
could not start (no venv, no bench/all.py at the ref); 0 otherwise. A "slower" verdict
is reported, never an error. See bench/README.md, "Before and after".
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # a test loads this file by its path
    sys.path.append(str(BENCH_DIR))

import all as bench_all  # noqa: E402

REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
#: The noise band when the base's own rounds spread less: ±10 %.
DEFAULT_BAND = 0.10
DEFAULT_ROUNDS = 2
SIDES = ("base", "head")
VERDICTS = ("within noise", "faster", "slower", "n/a", "failed")
#: A row made from each run's ``edge_pace_us`` (bench/floor.py's ``edge_pace``, taken at
#: the start and the end of every bench/all.py run): the tree's own per-event steps, idle.
PACE = ("floor", "the edge's per-event steps alone, idle (mean of the run's start and end)")


def log(message: str) -> None:
    print(f"compare: {message}", file=sys.stderr, flush=True)


# -- the table: pure functions of two JSON documents ---------------------------------------
@dataclass
class Comparison:
    """One figure of the table: what each tree measured in each round, and the verdict."""

    area: str
    scenario: str
    subject: str
    unit: str
    lower_is_better: bool
    #: One value per round; None where the round ran but the figure failed, or the row
    #: was missing from that round's table.
    base: list[float | None]
    head: list[float | None]
    #: Each round's ratio to the bare endpoint of the same run (ingest and queue rows).
    base_vs_bare: list[float | None] = field(default_factory=list)
    head_vs_bare: list[float | None] = field(default_factory=list)
    base_median: float | None = None
    head_median: float | None = None
    ratio: float | None = None  # head / base
    #: The band "within noise" allows around 1.0: the wider of the stated band and the
    #: base's own spread between its rounds.
    noise: float | None = None
    verdict: str = "n/a"  # within noise, faster, slower, n/a (the base), failed (the head)
    note: str = ""


def runs_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of a bench/all.py JSON document: ``{"runs": [...]}`` (``--repeat``, and
    what this script gathers per tree) or a single run. A run that produced no document
    is ``{"error": "..."}``."""
    return list(document["runs"]) if "runs" in document else [document]


def _lower_is_better(row: dict[str, Any]) -> bool:
    """Times (``ms``, ``µs``) and figures held to an upper bound (the queue's growth)."""
    unit = row.get("unit") or ""
    return unit.startswith(("ms", "µs")) or row.get("at_most") is not None


def _rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's table rows, with the pace row bench/all.py records beside them."""
    rows = list(run.get("rows") or [])
    pace = run.get("edge_pace_us") or {}
    values = [pace[k] for k in ("start", "end") if isinstance(pace.get(k), int | float)]
    if values:
        area, scenario = PACE
        rows.append(
            {
                "area": area,
                "scenario": scenario,
                "subject": "bench/floor.py",
                "figure": statistics.fmean(values),
                "unit": "µs per event",
            }
        )
    return rows


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    """Rows of different runs match as bench/all.py's ``--repeat`` table matches them:
    by area, scenario without the figures it quotes, and subject."""
    return (
        row.get("area", ""),
        bench_all.without_figures(row.get("scenario", "")),
        row.get("subject", ""),
    )


def compare(
    base: dict[str, Any], head: dict[str, Any], band: float = DEFAULT_BAND
) -> list[Comparison]:
    """Match the rows of the base's and the head's runs and judge each figure.

    ``base`` and ``head`` are bench/all.py JSON documents (see :func:`runs_of`), the
    rounds in the order they ran. Rows keep the order they first appear in, base first."""
    sides = {"base": runs_of(base), "head": runs_of(head)}
    table: dict[tuple[str, str, str], Comparison] = {}
    notes: dict[tuple[str, str, str], list[str]] = {}
    for side, runs in sides.items():
        for number, run in enumerate(runs):
            for row in _rows(run):
                key = _key(row)
                if key not in table:
                    table[key] = Comparison(
                        area=key[0],
                        scenario=row.get("scenario", ""),
                        subject=key[2],
                        unit=row.get("unit", ""),
                        lower_is_better=_lower_is_better(row),
                        base=[None] * len(sides["base"]),
                        head=[None] * len(sides["head"]),
                        base_vs_bare=[None] * len(sides["base"]),
                        head_vs_bare=[None] * len(sides["head"]),
                    )
                    notes[key] = []
                comparison = table[key]
                getattr(comparison, side)[number] = row.get("figure")
                getattr(comparison, f"{side}_vs_bare")[number] = row.get("ratio")
                if row.get("note") and (row.get("figure") is None or not row.get("valid", True)):
                    notes[key].append(f"{side} round {number + 1}: {row['note']}")
    for key, comparison in table.items():
        _judge(comparison, sides, band, notes[key])
    return list(table.values())


def _judge(
    c: Comparison, sides: dict[str, list[dict[str, Any]]], band: float, notes: list[str]
) -> None:
    """Medians, ratio, band and verdict of one row; ``notes`` gather why a side is
    missing."""
    base = [v for v in c.base if v is not None]
    head = [v for v in c.head if v is not None]
    for side, values in (("base", base), ("head", head)):
        runs = sides[side]
        if missing := len(runs) - len(values):
            errors: dict[str, list[str]] = {}
            for number, run in enumerate(runs, 1):
                if run.get("error"):
                    errors.setdefault(run["error"], []).append(str(number))
            why = "; ".join(f"round {', '.join(n)}: {e}" for e, n in errors.items())
            notes.append(
                f"{side}: no figure in {missing} of {len(runs)} rounds"
                + (f" ({why})" if why else "")
            )
    c.base_median = statistics.median(base) if base else None
    c.head_median = statistics.median(head) if head else None
    c.note = "; ".join(dict.fromkeys(notes))
    if not head:
        c.verdict = "failed"
        return
    if not base:
        c.verdict = "n/a"
        return
    if c.base_median <= 0 or c.head_median <= 0:
        c.note = "; ".join([*([c.note] if c.note else []), "no ratio between figures ≤ 0"])
        return
    c.ratio = c.head_median / c.base_median
    spread = (max(base) - min(base)) / c.base_median
    c.noise = max(band, spread)
    if abs(c.ratio - 1) <= c.noise:
        c.verdict = "within noise"
    else:
        c.verdict = "faster" if (c.ratio < 1) == c.lower_is_better else "slower"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "failed"
    if unit.startswith("µs"):
        return f"{value:,.2f}"
    return f"{value:,.1f}" if unit.startswith("ms") else f"{value:,.0f}"


def _rounds(values: Sequence[float | None], vs_bare: Sequence[float | None], unit: str) -> str:
    cells = []
    for value, ratio in zip(values, vs_bare, strict=True):
        text = _number(value, unit)
        cells.append(text if value is None or ratio is None else f"{text} ({ratio:.0%})")
    return " / ".join(cells)


def markdown(comparisons: Sequence[Comparison]) -> list[str]:
    """The table: one row per figure, medians first, then each round's values (with
    their ratio to the same run's bare endpoint, where the row has one)."""
    lines = [
        "| area | scenario | measured | unit | base | head | head / base | noise band "
        "| verdict | base, each round | head, each round | note |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for c in comparisons:
        base = "n/a" if c.base_median is None else _number(c.base_median, c.unit)
        head = _number(c.head_median, c.unit)
        ratio = "" if c.ratio is None else f"{c.ratio:.2f}"
        noise = "" if c.noise is None else f"±{c.noise:.0%}"
        verdict = c.verdict if c.verdict in ("within noise", "n/a") else f"**{c.verdict}**"
        cells = [c.area, c.scenario, c.subject, c.unit, base, head, ratio, noise, verdict]
        cells += [
            _rounds(c.base, c.base_vs_bare, c.unit),
            _rounds(c.head, c.head_vs_bare, c.unit),
            c.note,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return lines


def summary(comparisons: Sequence[Comparison]) -> str:
    counts = Counter(c.verdict for c in comparisons)
    return "verdicts: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])


# -- the trees -------------------------------------------------------------------------------
@dataclass
class Tree:
    """One side: its source tree, its interpreter and what the header says about it."""

    side: str  # base, head
    root: Path
    python: Path | None  # None when no venv could be made: every round fails
    label: str
    problem: str = ""  # why this tree cannot run, when it cannot


def git(*argv: str, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *argv], capture_output=True, text=True, check=False
    )
    if check and done.returncode:
        raise RuntimeError(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(ref: str) -> str:
    """The commit id a ref names (a branch, a tag, an abbreviated id, ``HEAD~3``)."""
    return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


@contextmanager
def checkout(commit: str) -> Iterator[Path]:
    """``commit`` checked out, detached, in a temporary directory; removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="eventrouter-bench-"))
    tree = parent / f"base-{commit[:12]}"
    try:
        git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        yield tree
    finally:
        if tree.exists():
            removed = git("worktree", "remove", "--force", str(tree), check=False)
            if tree.exists():
                log(f"could not remove the worktree {tree} ({removed}); `git worktree prune`")
        shutil.rmtree(parent, ignore_errors=True)


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "eventrouter-bench"


def _python_for_venvs() -> str:
    """The interpreter this venv was made from: both trees run on the same Python."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / version
    return str(candidate) if candidate.exists() else shutil.which("python3") or "python3"


def locks_for(tree: Path) -> tuple[Path, str]:
    """The locks a tree installs from: its own, or (a ref older than them) this tree's."""
    own = tree / "requirements"
    if (own / "build.txt").is_file() and (own / "test.txt").is_file():
        return own, "its own requirements/ locks"
    return REPO_ROOT / "requirements", "the head's requirements/ locks (it has none)"


@contextmanager
def base_venv(tree: Path, commit: str) -> Iterator[tuple[Path, str]]:
    """The base's venv: cached, built on first use, pointed at ``tree`` by an editable
    install. Held with an exclusive lock for the whole comparison, since the editable
    install points the venv at this run's checkout."""
    locks, source = locks_for(tree)
    key = f"{commit[:12]}-py{sys.version_info.major}.{sys.version_info.minor}"
    if locks.parent != tree:
        digest = hashlib.sha256()
        for name in ("build.txt", "test.txt"):
            digest.update((locks / name).read_bytes())
        key += f"-locks-{digest.hexdigest()[:12]}"
    venv = cache_dir() / key
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another comparison that uses {venv}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        python = venv / "bin" / "python"
        stamp = venv / ".installed"
        if stamp.exists():
            log(f"base venv: {venv} (cached; {stamp.read_text().strip()})")
        else:
            log(f"base venv: creating {venv} from {source} (a few minutes, once)")
            shutil.rmtree(venv, ignore_errors=True)
            _step([_python_for_venvs(), "-m", "venv", str(venv)], tree)
            pip = [str(python), "-m", "pip", "install", "--quiet", "--require-hashes"]
            _step([*pip, "-r", str(locks / "build.txt")], tree)
            _step([*pip, "-r", str(locks / "test.txt")], tree)
            stamp.write_text(f"{source}\n")
        editable = ["--quiet", "--no-deps", "--no-build-isolation", "-e", "."]
        _step([str(python), "-m", "pip", "install", *editable], tree)
        # Borrowed locks may lack something the base declares: say so, and run anyway.
        check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
        if check.returncode:
            log(f"base venv: `pip check`: {' / '.join(check.stdout.strip().splitlines())}")
        yield python, source


def _step(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{shlex.join(argv[:4])} ...: {' / '.join(tail)}")


def environment(python: Path) -> dict[str, str]:
    """The environment a tree's bench/all.py runs in: its own venv's ``bin/`` first on
    PATH (the scripts also find ``eventrouter`` and ``gunicorn`` beside their
    interpreter), and no other tree's search path."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    here = str(Path(sys.prefix) / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != here]
    env["PATH"] = os.pathsep.join([str(python.parent), *path])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    return env


@dataclass
class Round:
    """One bench/all.py run of one tree."""

    side: str
    number: int
    seconds: float
    exit: int | None
    document: dict[str, Any]  # its JSON document, or {"error": ...}


def _idle_seconds() -> float:
    """Machine-wide idle and I/O-wait CPU seconds so far, summed over all CPUs."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def settle(idle_share: float = 0.85, window: float = 2.0, limit: float = 90.0) -> str:
    """Wait until the machine is quiet: a ``window`` in which at least ``idle_share`` of
    every CPU was idle (the previous round's broker or store done with its backlog), for
    at most ``limit`` seconds. Returns what it saw, for the log: rounds that start on a
    machine still busy with the round before are what makes an A/B uneven."""
    cpus = os.cpu_count() or 1
    started = time.monotonic()
    share = 0.0
    while True:
        before, at = _idle_seconds(), time.monotonic()
        time.sleep(window)
        share = (_idle_seconds() - before) / ((time.monotonic() - at) * cpus)
        waited = time.monotonic() - started
        if share >= idle_share:
            return f"quiet after {waited:.0f} s ({share:.0%} idle)"
        if waited >= limit:
            return f"still busy after {waited:.0f} s ({share:.0%} idle); starting anyway"


def run_all(tree: Tree, options: Sequence[str], number: int, work: Path) -> Round:
    """``tree``'s bench/all.py with ``options``, its full report kept as
    ``compare-latest/<side>-<number>.md``. A run that cannot start or writes no JSON
    becomes ``{"error": ...}``: the table shows it, the comparison goes on."""
    if not (tree.problem or tree.python is None):
        sys.stderr.write(f"{tree.side}: round {number}: machine {settle()}\n")
    started = time.monotonic()
    script = tree.root / "bench" / "all.py"
    if tree.problem or tree.python is None:
        return Round(tree.side, number, 0.0, None, {"error": tree.problem or "no interpreter"})
    json_path = work / f"{tree.side}-{number}.json"
    argv = [str(tree.python), str(script), *options, "--json", str(json_path)]
    tail: deque[str] = deque(maxlen=5)
    with open(work / f"{tree.side}-{number}.out", "w") as stdout:
        process = subprocess.Popen(
            argv,
            cwd=tree.root,
            env=environment(tree.python),
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for line in process.stderr:  # progress, shown as it comes, kept for the note
                sys.stderr.write(f"{tree.side}: {line}")
                if line.strip():
                    tail.append(line.strip())
            code = process.wait()
        finally:
            if process.poll() is None:  # interrupted: SIGTERM lets it stop its servers
                process.terminate()
                try:
                    process.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    process.kill()
    seconds = time.monotonic() - started
    report = tree.root / "bench" / "results" / "all-latest.md"
    if code == 0 or json_path.exists():
        keep = RESULTS_DIR / "compare-latest" / f"{tree.side}-{number}.md"
        keep.parent.mkdir(parents=True, exist_ok=True)
        if report.exists():
            shutil.copyfile(report, keep)
    try:
        document = json.loads(json_path.read_text())
    except (OSError, ValueError):
        last = tail[-1] if tail else "no output"
        document = {"error": f"bench/all.py exited {code}: {last}"}
    return Round(tree.side, number, round(seconds, 1), code, document)


def prepare_base(stack: ExitStack, ref: str, commit: str) -> Tree:
    """The base tree checked out with its venv, both undone when ``stack`` closes. When
    either cannot be made, a tree whose every round fails with the reason."""
    label = f"`{ref}` = {commit[:12]}"
    try:
        root = stack.enter_context(checkout(commit))
    except Exception as exc:
        log(f"base: cannot check it out: {exc}")
        return Tree("base", REPO_ROOT, None, label, problem=f"no checkout: {exc}")
    if not (root / "bench" / "all.py").exists():  # no venv is worth building then
        return Tree("base", root, None, label, problem="no bench/all.py at this ref")
    try:
        python, source = stack.enter_context(base_venv(root, commit))
    except Exception as exc:
        log(f"base: cannot make its venv: {exc}")
        return Tree("base", root, None, label, problem=f"no venv: {exc}")
    return Tree("base", root, python, f"{label}, its venv from {source}")


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Every other option goes to both trees' bench/all.py (see its --help); "
        "--json is this script's. See bench/README.md, 'Before and after'.",
    )
    parser.add_argument("--base", required=True, metavar="REF", help="the git ref to compare with")
    parser.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_ROUNDS,
        metavar="N",
        help="rounds, each runs the base then the head [%(default)s]",
    )
    parser.add_argument(
        "--band",
        type=float,
        default=DEFAULT_BAND,
        metavar="FRACTION",
        help="the least noise band, when the base's rounds spread less [%(default)s]",
    )
    args, options = parser.parse_known_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 0 <= args.band < 1:
        parser.error("--band must be a fraction, from 0 up to 1")
    if any(option == "--json" or option.startswith("--json=") for option in options):
        parser.error("--json: this script writes bench/results/compare-latest.json")
    bench_all.parse_args(options)  # the head's own check, before any venv is built
    return args, options


def main(argv: Sequence[str] | None = None) -> int:
    args, options = parse_args(argv)
    try:
        commit = resolve(args.base)
    except RuntimeError:
        print(f"compare: --base {args.base}: not a commit in this repository", file=sys.stderr)
        return 2
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C: the running bench/all.py stops its
    # servers, and the worktree is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    RESULTS_DIR.mkdir(exist_ok=True)
    shutil.rmtree(RESULTS_DIR / "compare-latest", ignore_errors=True)
    started_at, started, load_at_start = datetime.now(UTC), time.monotonic(), _load()
    head_git = bench_all.machine()["git"]
    head = Tree("head", REPO_ROOT, Path(sys.executable), f"this tree at {head_git}")
    rounds: list[Round] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base = prepare_base(stack, args.base, commit)
        for number in range(1, args.repeat + 1):
            for tree in (base, head):
                log(f"== round {number} of {args.repeat}: {tree.side} ({tree.label}) ==")
                rounds.append(run_all(tree, options, number, work))
    documents = {side: {"runs": [r.document for r in rounds if r.side == side]} for side in SIDES}
    comparisons = compare(documents["base"], documents["head"], args.band)
    seconds = time.monotonic() - started
    header = (
        f"`bench/compare.py --base {args.base}` on {started_at:%Y-%m-%d %H:%M} UTC, "
        f"{seconds / 60:.1f} min, {args.repeat} round{'s' if args.repeat > 1 else ''} "
        f"(base then head in each); base: {base.label}; head: {head.label}; bench/all.py "
        f"{shlex.join(options) or '(defaults)'}; load average {load_at_start} at the start, "
        f"{_load()} at the end; noise band: the base's own spread, at least ±{args.band:.0%}."
    )
    per_round = [
        f"- round {r.number}, {r.side}: "
        + ("did not run" if r.exit is None else f"{r.seconds / 60:.1f} min, exit {r.exit}")
        + (f" ({r.document['error']})" if "error" in r.document else "")
        for r in rounds
    ]
    lines = [header, "", *markdown(comparisons), "", f"- {summary(comparisons)}", *per_round]
    print("\n".join(lines))
    (RESULTS_DIR / "compare-latest.md").write_text(
        "\n".join(["# Before and after", "", *lines]) + "\n"
    )
    document = {
        "started": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "base": {"ref": args.base, "commit": commit, "label": base.label},
        "head": {"git": head_git, "label": head.label},
        "options": options,
        "repeat": args.repeat,
        "band": args.band,
        "load_average": {"start": load_at_start, "end": _load()},
        "rounds": [asdict(r) for r in rounds],
        "rows": [asdict(c) for c in comparisons],
    }
    (RESULTS_DIR / "compare-latest.json").write_text(
        json.dumps(document, indent=2, allow_nan=False) + "\n"
    )
    log(f"written to {RESULTS_DIR.relative_to(REPO_ROOT)}/compare-latest.md and .json")
    return 1 if any(r.exit != 0 for r in rounds) else 0


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
