"""The fault-injection suite's report: each case's figures, printed after the run."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

RECORDS: list[dict[str, Any]] = []


@pytest.fixture
def fault_report() -> list[dict[str, Any]]:
    return RECORDS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECORDS:
        return
    terminalreporter.section("fault injection: what each case measured")
    for record in RECORDS:
        figures = ", ".join(f"{key} {value}" for key, value in record.items() if key != "case")
        terminalreporter.write_line(f"{record['case']}: {figures}")
    path = os.environ.get("EVENTROUTER_FAULTS_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(RECORDS, file, indent=2)
