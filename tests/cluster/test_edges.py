"""Several edges and workers: two ``eventrouter serve`` behind nginx, two ``eventrouter
worker``, running ``deploy/several-edges/`` as shipped (tests/cluster/edges_support.py).

Needs nginx, the system RabbitMQ (its own queue prefix), Redis (dedup, its own key
prefix) and PostgreSQL (a database of its own). The fault case prints what it measured
(acknowledged, stored, answers by status, resends) beside its result; docs/scaling.md
quotes it.
"""

from __future__ import annotations

import shutil
import signal

import httpx

from tests.admin_support import live_ids, open_tail, receive_until, sign_in
from tests.cdn_support import make_prefix, nginx_test
from tests.cluster.edges_support import (
    EDGES_CONFIG,
    BalancedLoad,
    balancer_config,
    topology,
)
from tests.faults.support import assert_exactly_once, settle, stored
from tests.helpers import ADMIN_BEARER, HANG_GUARD, eventually, run_eventrouter, unique


def test_the_shipped_configs_check(tmp_path):
    """``eventrouter config check`` accepts the shipped edge config with its variables
    set, and ``nginx -t`` the balancer config with two edges."""
    env = {
        "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672//",
        "DEDUP_REDIS_URL": "redis://127.0.0.1:6379/6",
        "POSTGRES_URL": "postgresql+psycopg://postgres@127.0.0.1/test",
    }
    checked = run_eventrouter("config", "check", str(EDGES_CONFIG), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    prefix = make_prefix()
    conf = prefix / "balancer.conf"
    conf.write_text(balancer_config(["127.0.0.1:8001", "127.0.0.1:8002"], 8080))
    tested = nginx_test(conf, prefix)
    assert tested.returncode == 0, tested.stderr
    text = conf.read_text()
    assert "server 127.0.0.1:8001 max_fails=2 fail_timeout=10s;" in text
    assert "server 127.0.0.1:8002 max_fails=2 fail_timeout=10s;" in text
    assert "listen 127.0.0.1:8080;" in text
    shutil.rmtree(prefix, ignore_errors=True)


def test_kill_9_one_edge_and_one_worker_under_load(tmp_path, capsys):
    """Under load through nginx (some batches sent twice, as an SDK that lost a 200
    does), SIGKILL one edge (with POSTs in flight on it), then one worker: every answer
    is 200 or a retryable 502/503/504, the POSTs the dead edge held were resent to the
    other edge and answered 200, and what was acknowledged is what is stored, once."""
    with topology(tmp_path) as running:
        running.start(edges=2, workers=2)
        balancer = running.balancer
        doomed_edge, surviving_edge = running.edges
        doomed_worker, surviving_worker = running.workers
        doomed_address = f"127.0.0.1:{doomed_edge.port}"
        sinks = {"events": running.sink}
        # 1 batch in 10 is sent twice (an SDK that lost the 200): round robin takes the
        # copy to the other edge, and it must still be stored once.
        load = BalancedLoad(balancer.url, clients=4, size=10, pause=0.01, resend_every=10)
        load.start()
        try:
            load.wait_acknowledged(1000)
            eventually(lambda: len(stored(running.sink)) > 0, "events stored by the workers")
            # Both workers consume the one sink queue, and the broker shares it out.
            eventually(lambda: running.consumers() == 2, "two consumers of the sink queue")
            tried = {edge for request in balancer.requests() for edge in request[0]}
            # Frozen first, so that requests are surely in flight on it when it dies
            # (a frozen edge still accepts connections: the kernel does).
            doomed_edge.send(signal.SIGSTOP)
            eventually(lambda: load.waiting(2.0) >= 1, "a request held by the frozen edge")
            held = load.waiting(2.0)
            doomed_edge.stop(signal.SIGKILL)  # its process group: gunicorn and its worker
            at_edge_kill = len(load.acknowledged)
            load.wait_acknowledged(at_edge_kill + 1000)
            doomed_worker.stop(signal.SIGKILL)
            at_worker_kill = len(load.acknowledged)
            eventually(lambda: running.consumers() == 1, "the killed worker's consumer gone")
            load.wait_acknowledged(at_worker_kill + 1000)
            load.stop()
            took = settle(load, sinks)
            rows = assert_exactly_once(load, sinks)
            counts = stored(running.sink)
            requests = balancer.requests()
        except BaseException:
            print(running.logs())
            raise
        finally:
            load.stop()
        assert surviving_edge.process.poll() is None, surviving_edge.log()
        assert surviving_worker.process.poll() is None, surviving_worker.log()
    # Both edges took requests before the kill (round robin).
    assert tried == {doomed_address, f"127.0.0.1:{surviving_edge.port}"}, tried
    # The POSTs in flight on the killed edge: nginx saw the connection reset (502; 504
    # had the freeze outlasted proxy_read_timeout) and, with non_idempotent, resent them
    # to the other edge, which answered 200. (Without non_idempotent the client gets
    # the 502: docs/scaling.md.)
    resent = [r for r in requests if len(r[0]) == 2 and r[0][0] == doomed_address]
    resent_ok = [r for r in resent if r[1][0] in ("502", "504") and r[2] == "200"]
    assert resent_ok, (held, resent)
    assert not load.failures, load.failures[:3]
    assert set(load.statuses) <= {200, 502, 503, 504}, load.statuses
    assert load.resent > 0
    # Acknowledged equals stored: every batch was retried until a 200, so nothing was
    # stored that was not acknowledged, and every acknowledged id is there once.
    assert set(counts) == set(load.acknowledged)
    assert sum(counts.values()) == len(load.acknowledged) == rows["events"]
    non_200 = {status: n for status, n in sorted(load.statuses.items()) if status != 200}
    line = (
        f"2 edges + 2 workers behind nginx, kill -9 of one edge (frozen with {held} "
        f"requests in flight) then one worker: acknowledged {len(load.acknowledged)} "
        f"events, stored {sum(counts.values())} ({len(counts)} distinct, 0 duplicates); "
        f"responses 200: {load.statuses[200]}, non-200 by status: {non_200 or 'none'}, "
        f"dropped connections: {load.transport_errors}; batches the clients sent twice: "
        f"{load.resent}; requests nginx resent to the "
        f"other edge: {len(resent)} ({len(resent_ok)} after a reset: 502/504 then 200); "
        f"stored all after {took:.1f} s"
    )
    with capsys.disabled():
        print(f"\n{line}")


def test_tail_and_dashboard_of_either_edge_show_both_edges_events(tmp_path):
    """A live tail on edge A shows an event posted to edge B (the tail feeds from the
    broker's exchange every edge publishes to), with a session signed in on edge B; the
    query API of each edge lists the events posted to both (it reads the shared store)."""
    with topology(tmp_path) as running:
        running.start(edges=2, workers=1, balancer=False)
        edge_a, edge_b = running.edges
        cookie = sign_in(edge_b.url)  # one edge's session is valid on every edge
        with open_tail(edge_a.url, cookie) as ws:
            receive_until(ws, lambda m: "badge live" in m, "the Live badge")
            to_b = unique("via-b-")
            posted = httpx.post(
                f"{edge_b.url}/v1/track",
                json={"userId": "u-tail", "event": "Posted To B", "messageId": to_b},
                timeout=HANG_GUARD,
            )
            assert posted.status_code == 200, posted.text
            message = receive_until(ws, lambda m: to_b in live_ids(m), "B's event on A's tail")
            assert "Posted To B" in message
        to_a = unique("via-a-")
        posted = httpx.post(
            f"{edge_a.url}/v1/track",
            json={"userId": "u-tail", "event": "Posted To A", "messageId": to_a},
            timeout=HANG_GUARD,
        )
        assert posted.status_code == 200, posted.text

        def listed(edge) -> set[str]:
            response = httpx.get(
                f"{edge.url}/api/v1/events",
                params={"user_id": "u-tail"},
                headers=ADMIN_BEARER,
                timeout=HANG_GUARD,
            )
            assert response.status_code == 200, response.text
            return {event["message_id"] for event in response.json()["events"]}

        for edge in (edge_a, edge_b):
            eventually(lambda e=edge: listed(e) == {to_a, to_b}, f"both events on {edge.url}")
        page = httpx.get(
            f"{edge_a.url}/admin/events",
            params={"user_id": "u-tail"},
            headers=ADMIN_BEARER,
            timeout=HANG_GUARD,
        )
        assert page.status_code == 200, page.text
        assert to_a in page.text and to_b in page.text
