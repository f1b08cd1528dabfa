"""The unit folder's promise, kept: `make test-fast` runs tests/unit with no service up
(tests/README.md). A unit module imports no service client, no helper that starts or
reaches a service, a server process or a browser, and no test module of another folder.
A test that needs one of them belongs in tests/integration/ or tests/browser/.

This reads the imports only; what a test does at run time is proven by running the
folder in a network namespace where nothing listens (tests/README.md, "Unit tests
without services").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent

#: Module (or package prefix) -> what importing it means.
NOT_IN_UNIT = {
    "amqp": "a RabbitMQ client",
    "kombu": "a broker client",
    "confluent_kafka": "a Kafka client",
    "redis": "a Redis client",
    "psycopg": "a PostgreSQL client",
    "clickhouse_driver": "a ClickHouse client",
    "boto3": "an S3 client",
    "moto": "moto's S3 server",
    "playwright": "a browser",
    "subprocess": "a process of its own",
    "tests.queue_support": "RabbitMQ and Redis",
    "tests.kafka_support": "a Kafka broker (tansu)",
    "tests.store_support": "PostgreSQL and ClickHouse",
    "tests.s3_support": "moto's S3 server",
    "tests.conformance_support": "the conformance kit's writer processes and brokers",
    "tests.cdn_support": "nginx",
    "tests.browser_support": "a browser",
    "tests.tcp_proxy": "a proxy in front of a service",
    "tests.integration": "an integration module",
    "tests.browser": "a browser module",
    "tests.faults": "the fault-injection suite",
}
#: Names of tests.helpers that start processes.
PROCESS_HELPERS = {"ServeProcess", "CommandProcess", "run_eventrouter"}


def imports(path: Path) -> list[tuple[int, str, set[str]]]:
    """``(line, module, names)`` for every import in the module, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, set()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, {alias.name for alias in node.names}))
    return found


def offences(path: Path) -> list[str]:
    said = []
    for line, module, names in imports(path):
        for banned, meaning in NOT_IN_UNIT.items():
            if module == banned or module.startswith(banned + "."):
                said.append(f"{path.name}:{line}: imports {module} ({meaning})")
        if module == "tests.helpers" and names & PROCESS_HELPERS:
            started = ", ".join(sorted(names & PROCESS_HELPERS))
            said.append(f"{path.name}:{line}: imports {started} (an eventrouter process)")
    return said


@pytest.mark.parametrize("path", sorted(UNIT.glob("test_*.py")), ids=lambda p: p.name)
def test_a_unit_module_needs_no_service_process_or_browser(path):
    assert offences(path) == []


def test_the_check_sees_what_it_looks_for(tmp_path):
    module = tmp_path / "test_misplaced.py"
    module.write_text(
        "import subprocess\n"
        "from redis import Redis\n"
        "from tests.helpers import LiveServer, ServeProcess\n"
        "from tests.queue_support import amqp_env\n"
        "def test_x():\n"
        "    import psycopg\n"
    )
    assert offences(module) == [
        "test_misplaced.py:1: imports subprocess (a process of its own)",
        "test_misplaced.py:2: imports redis (a Redis client)",
        "test_misplaced.py:3: imports ServeProcess (an eventrouter process)",
        "test_misplaced.py:4: imports tests.queue_support (RabbitMQ and Redis)",
        "test_misplaced.py:6: imports psycopg (a PostgreSQL client)",
    ]
