"""bench/scaling.py's pure parts: its scenarios (1 against 2 workers, and 1 against 2
shards with ``--shards-config``), the command line's refusals, the CPU bookkeeping and
the table. Nothing here measures anything: the figures below are made up."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_bench_script

SHARDS = """[sinks.warehouse]
type = "clickhouse"
url = "clickhouse+native://default:@127.0.0.1:9001/${BENCH_DATABASE}"
cluster = "two_shards"
"""


@pytest.fixture(scope="module")
def scaling() -> ModuleType:
    return load_bench_script("scaling")


def test_default_scenarios_are_one_against_two_workers(scaling) -> None:
    args = scaling.parse_args([])
    assert (args.duration, args.drain_timeout) == (20.0, 120.0)
    found = scaling.scenarios(args)
    assert [(s.workers, s.clickhouse_ports) for s in found] == [(1, (9000,)), (2, (9000,))]
    assert all("${BENCH_DATABASE}" in s.sink_toml for s in found)
    quick = scaling.parse_args(["--quick", "--workers", "1,2,3"])
    assert quick.duration == scaling.QUICK["duration"]
    assert [s.workers for s in scaling.scenarios(quick)] == [1, 2, 3]


def test_a_shards_config_adds_one_against_two_shards(scaling, tmp_path: Path) -> None:
    path = tmp_path / "shards.toml"
    path.write_text(SHARDS)
    args = scaling.parse_args(
        ["--workers", "1", "--shards-config", str(path), "--shards-ports", "9001,9002"]
    )
    _, one, two = scaling.scenarios(args)
    assert (one.workers, two.workers) == (2, 2)
    assert one.sink_toml == scaling.SINGLE_NODE_SINK and one.clickhouse_ports == (9000,)
    assert two.sink_toml == SHARDS and two.clickhouse_ports == (9001, 9002)
    assert "1 shard" in one.label and "2 shards" in two.label
    # With 2 workers among --workers already, that run is the 1-shard side: not run twice.
    args = scaling.parse_args(["--shards-config", str(path), "--shards-ports", "9001,9002"])
    assert [(s.workers, s.clickhouse_ports) for s in scaling.scenarios(args)] == [
        (1, (9000,)),
        (2, (9000,)),
        (2, (9001, 9002)),
    ]


def test_quorum_adds_one_worker_on_the_three_nodes(scaling) -> None:
    args = scaling.parse_args(["--workers", "1", "--quorum"])
    assert args.quorum and args.quorum_urls == []  # filled in once the nodes are started
    assert len(scaling.scenarios(args)) == 1
    urls = [f"amqp://guest:guest@127.0.0.1:{port}//" for port in (5681, 5682, 5683)]
    args.quorum_urls = urls
    single, quorum = scaling.scenarios(args)
    assert (single.broker_urls, single.queue_type) == ((), "classic")
    assert (quorum.workers, quorum.broker_urls, quorum.queue_type) == (1, tuple(urls), "quorum")
    assert "quorum" in quorum.label


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--workers", "0"], "--workers"),
        (["--duration", "0"], "--duration"),
        (["--shards-config", "/nonexistent/shards.toml"], "--shards-config"),
        (["--broker", "amqp://guest:guest@rabbit.example:5672//"], "loopback"),
    ],
)
def test_bad_options_are_refused_naming_them(scaling, argv, named, capsys) -> None:
    with pytest.raises((SystemExit, ValueError)) as raised:
        scaling.parse_args(argv)
    assert named in capsys.readouterr().err + str(raised.value)


def test_a_shards_config_without_the_sink_is_refused(scaling, tmp_path: Path) -> None:
    path = tmp_path / "shards.toml"
    path.write_text('[sinks.other]\ntype = "clickhouse"\n')
    args = scaling.parse_args(["--shards-config", str(path)])
    with pytest.raises(SystemExit, match=r"needs a \[sinks.warehouse\] table"):
        scaling.scenarios(args)


def test_listening_pids_finds_the_process_of_a_listening_port(scaling) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert scaling.listening_pids(port) == {os.getpid()}
    assert scaling.listening_pids(port) == set()


def test_cpu_used_counts_new_processes_from_zero_and_drops_gone_ones(scaling) -> None:
    before = {1: 10.0, 2: 5.0}
    after = {1: 12.5, 3: 0.5}  # 2 exited, 3 was born
    assert scaling.used(before, after) == pytest.approx(3.0)


def test_the_table_has_a_row_per_scenario_with_cpu_per_event(scaling) -> None:
    args = scaling.parse_args(["--quick"])
    one, two = scaling.scenarios(args)
    results = [
        scaling.Result(one, 10_000, 4.0, 8_000, 10_000, 1.5,
                       cpu={"edge": 0.2, "workers": 0.1, "rabbitmq": 0.05, "clickhouse": 0.05}),
        scaling.Result(two, 10_000, 4.0, 9_000, 9_000, None, cpu={"edge": 0.2}),
    ]  # fmt: skip
    text = scaling.report(results, args)
    rows = [line for line in text.splitlines() if line.startswith("| 1 worker")]
    assert rows == [
        "| 1 worker, 1 ClickHouse server | 10,000 | 10,000 | 2,000 | 1.5 s | 0 "
        "| 20.0 | 10.0 | 5.0 | 5.0 | 40.0 |"
    ]
    second = next(line for line in text.splitlines() if line.startswith("| 2 workers"))
    assert "| no | 1,000 |" in second and "n/a" in second  # not drained, 1,000 lost
