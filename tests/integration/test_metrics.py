"""``GET /metrics`` after real traffic: metric names and labels as docs/metrics.md lists
them, in one process and summed over gunicorn's workers (multiprocess mode)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import LiveServer, ServeProcess, eventually, make_config
from tests.queue_support import amqp_env, to_toml  # noqa: F401 - fixture

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

SOURCES = {"sources": [{"name": "web", "write_key": "wk"}]}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def grown(before: dict, after: dict) -> dict:
    """What each sample gained between two scrapes: in-process servers share this test
    process's metrics with every other test that ran before."""
    return {key: after[key] - before.get(key, 0.0) for key in after}


def post_traffic(url: str) -> None:
    """20 accepted tracks over separate connections, 1 identify, a batch with one bad
    item, one event without a user, and one with a wrong writeKey."""
    for i in range(20):
        with httpx.Client() as client:  # a new connection each: both workers take some
            response = client.post(
                f"{url}/v1/track", json={"userId": f"u{i}", "event": "E"}, auth=("wk", "")
            )
            assert response.status_code == 200, response.text
    ok = httpx.post(f"{url}/v1/identify", json={"userId": "u1"}, auth=("wk", ""))
    assert ok.status_code == 200
    batch = {"batch": [{"type": "track", "userId": "u", "event": "A"}, {"type": "track"}]}
    assert httpx.post(f"{url}/v1/batch", json=batch, auth=("wk", "")).status_code == 200
    missing = httpx.post(f"{url}/v1/track", json={"event": "E"}, auth=("wk", ""))
    assert missing.status_code == 400
    wrong = httpx.post(f"{url}/v1/track", json={"userId": "u", "event": "E"}, auth=("x", ""))
    assert wrong.status_code == 401


def assert_counts(found: dict) -> None:
    assert value(found, "eventrouter_events_accepted_total", type="track", source="web") == 21
    assert value(found, "eventrouter_events_accepted_total", type="identify", source="web") == 1
    rejected = value(found, "eventrouter_events_rejected_total", reason="missing_field")
    assert rejected == 2  # the bad batch item and the event without a user
    assert value(found, "eventrouter_events_rejected_total", reason="invalid_write_key") == 1
    assert value(found, "eventrouter_events_received_total") == 25
    assert value(found, "eventrouter_sink_events_written_total", sink="sink:local") == 22
    assert value(found, "eventrouter_sink_batches_failed_total", sink="sink:local") == 0
    assert value(found, "eventrouter_sink_batch_events_count", sink="sink:local") >= 1
    timed = value(
        found,
        "eventrouter_http_request_duration_seconds_count",
        route="/v1/track",
        method="POST",
        status="2xx",
    )
    assert timed == 20
    assert (
        value(
            found,
            "eventrouter_http_request_duration_seconds_count",
            route="/v1/track",
            method="POST",
            status="4xx",
        )
        == 2
    )


def test_metrics_in_one_process(tmp_path):
    server = LiveServer(make_config(tmp_path, SOURCES)).start()
    try:
        before = samples(server.client.get("/metrics").text)
        post_traffic(server.url)
        response = server.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        assert_counts(grown(before, samples(response.text)))
    finally:
        server.stop()


def test_metrics_sum_every_gunicorn_worker(tmp_path):
    path = tmp_path / "eventrouter.toml"
    path.write_text('[[sources]]\nname = "web"\nwrite_key = "wk"\n', encoding="utf-8")
    serve = ServeProcess(tmp_path, "--config", str(path), workers=2).wait_ready()
    try:
        post_traffic(serve.url)

        def scrape() -> dict:  # on a new connection: answered by either worker
            with httpx.Client() as client:
                response = client.get(f"{serve.url}/metrics")
            assert response.status_code == 200
            return samples(response.text)

        def counted() -> bool:
            found = scrape()
            return value(found, "eventrouter_events_received_total") == 25

        # A worker adds its request counts to the shared files every
        # metrics.FLUSH_INTERVAL seconds (docs/metrics.md): the other one's last
        # requests may show on a later scrape, and then stay.
        eventually(counted, "every worker's request counts in a scrape")
        for _ in range(10):
            assert_counts(scrape())
    finally:
        assert serve.stop() == 0


def test_queue_depth_per_sink_is_read_at_scrape_time(amqp_env):  # noqa: F811
    server = LiveServer(amqp_env.config()).start()  # no worker: the queue only grows
    try:
        before = samples(server.client.get("/metrics").text)
        for i in range(3):
            assert server.post("/v1/track", {"userId": f"u{i}", "event": "E"}).status_code == 200
        found = samples(server.client.get("/metrics").text)
        assert value(found, "eventrouter_queue_depth", sink="local") >= 1  # a gauge: as is
        assert value(found, "eventrouter_dead_letters", sink="local") == 0
        counted = grown(before, found)
        assert value(counted, "eventrouter_sink_events_written_total", sink="broker") == 3
        # a count of observations (one per publish), not a duration
        assert value(counted, "eventrouter_sink_write_duration_seconds_count", sink="broker") >= 1
    finally:
        server.stop()


def test_worker_serves_its_own_metrics(amqp_env):  # noqa: F811
    """``eventrouter worker --metrics-port``: events written, and a message that cannot
    be decoded dead-lettered, per sink."""
    from kombu import Exchange, Producer

    from tests.helpers import eventually, free_port
    from tests.queue_support import WorkerProcess

    server = LiveServer(amqp_env.config()).start()
    port = free_port()
    worker = WorkerProcess(amqp_env.write_config(amqp_env.raw()), "--metrics-port", str(port))
    try:
        for i in range(5):
            assert server.post("/v1/track", {"userId": f"u{i}", "event": "E"}).status_code == 200
        with amqp_env.connection() as connection:  # not commands: dead-lettered
            exchange = Exchange(f"{amqp_env.prefix}.events", "direct", durable=True)
            Producer(connection.channel()).publish(
                b"junk", exchange=exchange, routing_key="sink.local"
            )

        def scraped() -> dict:
            try:
                return samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
            except httpx.HTTPError:  # not listening yet
                return {}

        def done() -> bool:
            found = scraped()
            written = value(found, "eventrouter_sink_events_written_total", sink="sink:local")
            dead = value(found, "eventrouter_sink_events_dead_lettered_total", sink="local")
            return written == 5 and dead == 1

        eventually(done, "the worker's metrics show 5 written and 1 dead-lettered")
    finally:
        worker.stop()
        server.stop()


def test_grafana_dashboard_queries_only_metrics_that_exist():
    """deploy/grafana/eventrouter.json parses, and every metric its queries name is one
    that eventrouter exports (a renamed metric must not leave a silently empty panel)."""
    import json
    import re
    from pathlib import Path

    from eventrouter import metrics

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "deploy/grafana/eventrouter.json").read_text()
    )
    exported = set()
    for family in metrics.get().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exported |= {family.name + s for s in suffixes.get(family.type, ("",))}
    exported |= {name for name, _ in metrics.QUEUE_GAUGES.values()}
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\beventrouter_[a-z_]+", target["expr"]))
    assert used and used <= exported, used - exported
    assert {name for name, _ in metrics.QUEUE_GAUGES.values()} <= used
