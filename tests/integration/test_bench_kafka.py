"""bench/kafka_queue.py, queue mode on Kafka beside RabbitMQ: the config it gives the
servers and the table it prints. Nothing here measures anything; the numbers are made
up."""

from __future__ import annotations

from types import ModuleType

import pytest

from eventrouter import config
from tests.helpers import load_bench_script

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench_script("kafka_queue")


@pytest.mark.parametrize("tansu", [True, False])
def test_the_kafka_config_loads_with_tansus_consumer_settings_only_for_tansu(
    bench, tmp_path, tansu
):
    path = tmp_path / "kafka.toml"
    prefix = bench.write_config(path, "kafka://127.0.0.1:9092", tmp_path / "events.db", tansu)
    loaded = config.load(str(path), env={})
    assert (loaded.queue.transport, loaded.queue.prefix) == ("kafka", prefix)
    assert loaded.queue.kafka.partitions == 6
    assert ("max.poll.interval.ms" in loaded.queue.kafka.consumer) is tansu
    assert list(loaded.sinks) == ["local"]


def test_the_rabbitmq_config_has_no_kafka_table(bench, tmp_path):
    path = tmp_path / "rabbitmq.toml"
    bench.write_config(path, bench.AMQP_URL, tmp_path / "events.db", False)
    loaded = config.load(str(path), env={})
    assert loaded.queue.transport == "amqp"
    assert "kafka" not in path.read_text()


def test_the_report_puts_both_brokers_side_by_side_and_flags_an_incomplete_drain(bench):
    rows = [
        bench.Row("rabbitmq", "single", 1000.0, 1000.0, 10.0, 90.0, 0, 5000),
        bench.Row("kafka", "batch", 100.0, 10000.0, 120.0, 300.0, 2, 50000),
    ]
    drains = [bench.DrainRow("rabbitmq", 5000, 5000, 2.0), bench.DrainRow("kafka", 50000, 10, 5.0)]
    args = bench.argparse.Namespace(seconds=10.0, connections=32, workers=1)
    table = bench.report(rows, drains, args).splitlines()
    assert "| rabbitmq | single | 1,000 | 1,000 | 10.0 | 90.0 | 0 |" in table
    assert "| kafka | batch | 100 | 10,000 | 120.0 | 300.0 | 2 |" in table
    assert "| rabbitmq | complete | 5,000 | 5,000 | 2,500 |" in table
    assert "| kafka | INCOMPLETE | 50,000 | 10 | 2 |" in table


def test_a_broker_off_loopback_is_refused(bench, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(["--kafka-url", "kafka://kafka.example.com:9092"])
    assert exited.value.code == 2
    assert "not on loopback" in capsys.readouterr().err
