"""bench/quality.py runs, and prints every figure bench/README.md quotes from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_quality_bench_prints_every_row():
    result = subprocess.run(
        [sys.executable, "bench/quality.py", "--events", "300", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for row in (
        "| jsonschema-rs, Plan.check (decode included) | valid |",
        "| jsonschema-rs, is_valid alone | invalid |",
        "| no plan |",
        "| reject |",
        "| drop |",
        "| catalogue |",
    ):
        assert row in out, out
