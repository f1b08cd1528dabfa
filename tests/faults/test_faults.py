"""Fault injection: load the system on loopback, break one part, then count.

Each case sends a bounded load through the real pipeline (SDK-like clients that retry a
503 or a dropped connection with the same ``messageId``s), injects one fault while the
load runs, and checks that every event answered ``200`` is stored exactly once, with
dedup on. What each case measured is printed at the end of the run (conftest.py).

Faults are real where this machine allows it: RabbitMQ's application is stopped and
started (``rabbitmqctl stop_app`` / ``start_app``); workers and servers are killed or
signalled as an operator or the kernel would. PostgreSQL, ClickHouse and Redis are shared
with the rest of the suite and other users of the machine, so their outages are network
cuts: the pipeline reaches them through a loopback :class:`TcpProxy` that the test stops
(connections reset, new ones refused) and starts again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest

from eventrouter.queue.worker import SINK_DOWN_POLL
from tests.faults.support import Load, assert_exactly_once, report, settle, stored
from tests.helpers import LiveServer, ServeProcess, eventually, make_config
from tests.integration.test_metrics import samples, value
from tests.queue_support import (  # noqa: F401 - fixtures
    DEDUP_URL,
    QueueEnv,
    WorkerProcess,
    WorkerThread,
    amqp_env,
    unique,
)
from tests.store_support import store_sink
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow  # make test-fast leaves it out (pyproject.toml)

# ruff: noqa: F811 - pytest fixtures are parameters

#: An outage lasts until it has done what the case is about (the broker's spool taking
#: the load, a worker holding its batches, dedup reporting its store down), and until at
#: least this many events were acknowledged while it lasted: it is measured (``outage_s``
#: in the report), not waited out. A fixed 20 s outage exercised nothing more and cost
#: the suite a minute.
ACKNOWLEDGED_DURING = 1000
#: Batches the Redis case's clients send twice while dedup's store is cut off.
RESENT_DURING = 50


def serve(env: QueueEnv, raw: dict[str, Any], workers: int = 2) -> ServeProcess:
    path = env.write_config(raw, f"serve-{unique()}.toml")
    return ServeProcess(env.tmp_path, "--config", str(path), workers=workers).wait_ready()


def metric(url: str, name: str) -> float:
    import httpx

    return value(samples(httpx.get(f"{url}/metrics", timeout=10).text), name)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def rabbitmq_running() -> bool:
    result = subprocess.run(
        ["rabbitmqctl", "-q", "eval", "rabbit:is_running()."],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip() == "true"


@pytest.fixture
def restartable_rabbitmq(amqp_env):
    """The machine's RabbitMQ, running again after the test whatever happens."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to stop the broker (apt: rabbitmq-server)")
    yield amqp_env
    if not rabbitmq_running():
        rabbitmqctl("start_app")


# -- RabbitMQ stopped ------------------------------------------------------------------
def test_rabbitmq_stopped_during_load(restartable_rabbitmq, fault_report):
    """The edge (gunicorn, 2 workers) spools while RabbitMQ is stopped and answers 200
    throughout; the spool is replayed once it is back; the worker reconnects."""
    env = restartable_rabbitmq
    raw = env.raw(dedup=True)
    sinks = {"local": raw["sinks"]["local"]}
    api = serve(env, raw)
    worker = WorkerThread(make_config(env.tmp_path, raw)).start()
    load = Load(api.url).start()
    try:
        load.wait_acknowledged(500)
        [consumer] = worker.worker.consumers
        assert consumer.last_error is None, consumer.last_error
        rabbitmqctl("stop_app")
        stopped = time.monotonic()
        before = len(load.acknowledged)
        # The clients keep sending, into the edge's spool; the worker has lost its
        # connection and is reconnecting with backoff.
        load.wait_acknowledged(before + ACKNOWLEDGED_DURING)
        eventually(lambda: consumer.last_error is not None, "the worker losing the broker")
        during = len(load.acknowledged) - before
        rabbitmqctl("start_app")
        outage = time.monotonic() - stopped
        load.wait_acknowledged(len(load.acknowledged) + 200)
        load.stop()
        spooled = metric(api.url, "eventrouter_spool_spooled_events_total")
        eventually(lambda: metric(api.url, "eventrouter_spool_events") == 0, "the spools replayed")
        took = settle(load, sinks)
        replayed = metric(api.url, "eventrouter_spool_replayed_events_total")
    finally:
        load.stop()
        worker.stop()
        assert api.stop() == 0, api.log()
    rows = assert_exactly_once(load, sinks)
    # The spool answered for the broker: no client saw an error, and what the broker
    # missed was spooled and replayed.
    assert set(load.statuses) == {200}, load.statuses
    assert during > 0, "nothing was acknowledged while RabbitMQ was down"
    assert spooled >= during
    assert replayed == spooled
    report(
        fault_report,
        "RabbitMQ stopped (edge: 2 gunicorn workers, spool on)",
        load,
        outage_s=round(outage, 1),
        acknowledged_during_outage=during,
        spooled=int(spooled),
        replayed=int(replayed),
        stored_rows=rows["local"],
        stored_all_after_s=round(took, 1),
    )


# -- a worker killed -------------------------------------------------------------------
def test_worker_killed_with_sigkill_mid_batch(amqp_env, tmp_path, fault_report):
    """SIGKILL of ``eventrouter worker`` while it holds uncommitted and committed but
    unacknowledged batches; a new worker takes over. PostgreSQL store."""
    env = amqp_env
    with store_sink("postgres", tmp_path) as sink:
        sink["batch"] = {"max_events": 500, "timeout": "200ms"}
        raw = env.raw(dedup=True, sinks={"pg": sink})
        path = env.write_config(raw)
        sinks = {"pg": sink}
        api = LiveServer(make_config(env.tmp_path, raw)).start()
        first = WorkerProcess(path)
        load = Load(api.url).start()
        try:
            eventually(lambda: sum(stored(sink).values()) >= 1000, "1000 events stored")
            first.stop(signal.SIGKILL)
            at_kill = sum(stored(sink).values())
            load.wait_acknowledged(len(load.acknowledged) + 1000)
            second = WorkerProcess(path)
            load.stop()
            try:
                took = settle(load, sinks)
            finally:
                assert second.stop() == 0, second.log()
        finally:
            load.stop()
            first.stop(signal.SIGKILL)
            api.stop()
        rows = assert_exactly_once(load, sinks)
    assert set(load.statuses) == {200}, load.statuses
    report(
        fault_report,
        "worker SIGKILL mid-batch (PostgreSQL store)",
        load,
        stored_at_kill=at_kill,
        stored_rows=rows["pg"],
        stored_all_after_s=round(took, 1),
    )


# -- the stores unreachable ------------------------------------------------------------
def test_postgres_and_clickhouse_unreachable_under_load(amqp_env, tmp_path, fault_report):
    """Both stores cut off from the worker for longer than its retry window: the worker
    retries, then holds its batches (unacknowledged) until each store answers again;
    nothing is dead-lettered."""
    env = amqp_env
    pg_proxy = TcpProxy(5432).start()
    ch_proxy = TcpProxy(9000).start()
    with store_sink("postgres", tmp_path) as pg, store_sink("clickhouse", tmp_path) as ch:
        # What the counting reads directly; the worker reaches the stores via the proxies.
        sinks = {"pg": dict(pg), "ch": dict(ch)}
        pg["url"] = pg["url"].replace("127.0.0.1/", f"127.0.0.1:{pg_proxy.port}/")
        ch["url"] = ch["url"].replace("127.0.0.1/", f"127.0.0.1:{ch_proxy.port}/")
        fast = {"attempts": 3, "initial_backoff": "100ms", "max_duration": "2s"}
        for sink in (pg, ch):
            sink["batch"] = {"max_events": 500, "timeout": "200ms"}
            sink["retry"] = fast
        raw = env.raw(dedup=True, sinks={"pg": pg, "ch": ch})
        api = LiveServer(make_config(env.tmp_path, raw)).start()
        worker = WorkerThread(make_config(env.tmp_path, raw)).start()
        load = Load(api.url).start()
        try:
            load.wait_acknowledged(500)
            eventually(lambda: len(stored(sinks["ch"])) > 0, "ClickHouse writes flowing")
            pg_proxy.stop()
            ch_proxy.stop()
            cut = time.monotonic()
            before = len(load.acknowledged)
            consumers = {c.sink: c for c in worker.worker.consumers}
            # Past the retry window (``fast``): each consumer's retries are spent, its
            # store's probe says down, and it holds its batch ...
            eventually(lambda: all(c.held for c in consumers.values()), "both batches held")
            # ... and keeps holding it through more than one probe of the store, while
            # the edge goes on acknowledging into the queue.
            time.sleep(2 * SINK_DOWN_POLL)  # a duration the case needs, not an assertion
            load.wait_acknowledged(before + ACKNOWLEDGED_DURING)
            pg_proxy.start()
            ch_proxy.start()
            outage = time.monotonic() - cut
            load.wait_acknowledged(len(load.acknowledged) + 500)
            load.stop()
            took = settle(load, sinks)
        finally:
            load.stop()
            worker.stop()
            api.stop()
            pg_proxy.stop()
            ch_proxy.stop()
        rows = assert_exactly_once(load, sinks)
    assert set(load.statuses) == {200}, load.statuses
    for name, consumer in consumers.items():
        assert consumer.held >= 1, f"{name}: the outage never reached the worker"
        assert consumer.dead_lettered == 0, f"{name}: dead-lettered during an outage"
    report(
        fault_report,
        "PostgreSQL and ClickHouse unreachable (worker holds its batches)",
        load,
        outage_s=round(outage, 1),
        batches_held={name: c.held for name, c in consumers.items()},
        retries={name: c.retries for name, c in consumers.items()},
        stored_rows=rows,
        stored_all_after_s=round(took, 1),
    )


# -- the API stopped -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["embedded", "queue"])
def test_api_sigterm_during_load_drains_gracefully(amqp_env, mode, fault_report):
    """SIGTERM to ``eventrouter serve``'s master during load: in-flight requests finish,
    and every one answered 200 before the exit is stored."""
    env = amqp_env
    if mode == "embedded":
        raw = {"sinks": env.raw()["sinks"], "dedup": env.raw(dedup=True)["dedup"]}
    else:
        raw = env.raw(dedup=True)
    sinks = {"local": raw["sinks"]["local"]}
    api = serve(env, raw)
    worker = WorkerThread(make_config(env.tmp_path, raw)).start() if mode == "queue" else None
    load = Load(api.url, retry_refused=False, pause=0.0).start()
    try:
        load.wait_acknowledged(1000)
        os.kill(api.process.pid, signal.SIGTERM)  # as systemd or Docker would: the master
        code = api.process.wait(60)
        load.stop()
        took = settle(load, sinks)
    finally:
        load.stop()
        api.stop()
        if worker is not None:
            worker.stop()
    assert code == 0, api.log()
    rows = assert_exactly_once(load, sinks)
    assert load.transport_errors > 0, "the load ended before the server did"
    assert set(load.statuses) <= {200, 503}, load.statuses
    report(
        fault_report,
        f"API SIGTERM during load ({mode})",
        load,
        stored_rows=rows["local"],
        stored_all_after_s=round(took, 1),
    )


# -- Redis down ------------------------------------------------------------------------
def test_redis_down_dedup_degrades_to_the_stores_own(amqp_env, tmp_path, fault_report):
    """Dedup's Redis cut off while clients resend some batches (a lost 200):
    ingestion goes on, and the store's own ``message_id`` dedup keeps each event once."""
    env = amqp_env
    proxy = TcpProxy(6379).start()
    with store_sink("postgres", tmp_path) as sink:
        sink["batch"] = {"max_events": 500, "timeout": "200ms"}
        raw = env.raw(dedup=True, sinks={"pg": sink})
        raw["dedup"]["url"] = DEDUP_URL.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
        sinks = {"pg": sink}
        api = LiveServer(make_config(env.tmp_path, raw)).start()
        worker = WorkerThread(make_config(env.tmp_path, raw)).start()
        load = Load(api.url, resend_every=5).start()
        try:
            load.wait_acknowledged(500)
            proxy.stop()
            cut = time.monotonic()
            before = (len(load.acknowledged), load.resent)
            found: dict[str, Any] = {}

            def dedup_down() -> bool:
                found.update(api.health().json()["components"]["dedup"])
                return found["status"] == "down"

            eventually(dedup_down, "/health showing dedup down")
            health = dict(found)
            # Ingestion goes on, and batches are sent twice past a dedup that cannot
            # mark them: only the store's own key keeps them once.
            load.wait_acknowledged(before[0] + ACKNOWLEDGED_DURING)
            eventually(lambda: load.resent - before[1] >= RESENT_DURING, "batches resent")
            during = (len(load.acknowledged) - before[0], load.resent - before[1])
            proxy.start()
            outage = time.monotonic() - cut
            load.wait_acknowledged(len(load.acknowledged) + 500)
            load.stop()
            took = settle(load, sinks)
        finally:
            load.stop()
            worker.stop()
            api.stop()
            proxy.stop()
        rows = assert_exactly_once(load, sinks)
    assert set(load.statuses) == {200}, load.statuses
    assert health["status"] == "down" and health["required"] is False, health
    assert during[0] > 0 and during[1] > 0, during
    report(
        fault_report,
        "Redis (dedup) unreachable, 1 batch in 5 sent twice",
        load,
        outage_s=round(outage, 1),
        acknowledged_during_outage=during[0],
        batches_resent_during_outage=during[1],
        batches_resent=load.resent,
        stored_rows=rows["pg"],
        stored_all_after_s=round(took, 1),
    )
