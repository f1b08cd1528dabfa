"""Readings of one view compared in one run, call by call: what bench/clickhouse_views.py,
bench/clickhouse_paths.py and bench/postgres_analysis.py share.

Each reading (a store, a way of reading it) answers the view once (the warm-up, whose
answer is kept to compare), then ``runs`` timed calls, the readings alternated so that
a busy machine slows them alike. :func:`footer` is the line each report ends with.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Alternated:
    """Each reading's warm-up answer and timed calls (ms), by name."""

    answers: dict[str, Any]
    times: dict[str, list[float]]

    @property
    def median(self) -> dict[str, float]:
        return {kind: statistics.median(values) for kind, values in self.times.items()}

    def slowest(self) -> str:
        """``"412 / 230"``: each reading's slowest call, in the readings' order."""
        return " / ".join(f"{max(values):.0f}" for values in self.times.values())

    def same(self) -> str:
        """``yes`` when every reading gave the first one's answer, else ``NO``."""
        first, *rest = self.answers.values()
        return "yes" if all(answer == first for answer in rest) else "NO"

    def row(self, name: str) -> str:
        """The markdown row of an A/B: ``| name | A's median | B's median | B / A |
        slowest A / B | same answer |``, printed to stderr as it comes."""
        median = self.median
        line = (
            f"| {name} | {median['A']:.0f} | {median['B']:.0f} | "
            f"{median['B'] / median['A']:.2f} | {self.slowest()} | {self.same()} |"
        )
        print(line, file=sys.stderr, flush=True)
        return line


def alternate(
    view: Callable[[Any], Any], readers: Mapping[str, Any], kinds: Sequence[str], runs: int
) -> Alternated:
    """``view(readers[kind])`` for each of ``kinds``: a warm-up each, then ``runs``
    rounds of one timed call each."""
    answers = {kind: view(readers[kind]) for kind in kinds}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(runs):
        for kind in kinds:
            started = time.perf_counter()
            view(readers[kind])
            times[kind].append((time.perf_counter() - started) * 1000)
    return Alternated(answers, times)


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def clickhouse_footer(database: str, runs: int, load_before: str | None = None) -> str:
    """:func:`footer` for a ClickHouse database on this machine (its rows and version)."""
    from clickhouse_driver import Client

    client = Client("127.0.0.1", database=database)
    try:
        [(rows,)] = client.execute("SELECT count() FROM events")
        [(version,)] = client.execute("SELECT version()")
    finally:
        client.disconnect()
    return footer(rows, database, f"ClickHouse {version}", runs, load_before)


def footer(rows: int, database: str, server: str, runs: int, load_before: str | None = None) -> str:
    """The report's last line: what was read, how, when and how busy the machine was."""
    load = (
        f"{load_before} at the start, {load_average()} at the end"
        if load_before
        else (f"at the end {load_average()}")
    )
    return (
        f"- {rows:,} events in `{database}`, {server}; {runs} runs per reading after one "
        f"warm-up, alternated; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {load} "
        "(2 cores, shared with other sessions)"
    )
