"""The clickhouse sink on a ClickHouse cluster (``cluster = "NAME"``): two Debian 18.16
servers and a ZooKeeper, started once for the module (tests/cluster/clickhouse_support.py),
with two cluster definitions over them: ``er_shards`` (2 shards) and ``er_replicas``
(1 shard of 2 replicas). Each test has a database of its own.

- ``eventrouter migrate`` creates the local and the Distributed tables on both servers;
- events sent to ``eventrouter serve`` spread over both shards, are read once through
  the Distributed table (query API, dashboard), a redelivery collapses, and an erasure
  removes a user's rows on both shards;
- faults, under load through the queue and a worker: a shard down until the worker's
  backoff has grown to its longest (the worker retries; every acknowledged event is
  stored once after ``FINAL``), a replica down
  (writes and reads go on; the replica catches up once back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.privacy import erasure
from eventrouter.sinks.clickhouse_cluster import ClusterLayout
from eventrouter.sinks.clickhouse_rollup import compact
from eventrouter.sinks.clickhouse_store import ClickHouseStore, client_for
from eventrouter.store.analysis import retention
from eventrouter.store.interface import ADMIN_TABLES
from eventrouter.store.query import EventFilter, EventStore, PathCondition
from tests.cluster.clickhouse_support import (
    REPLICAS,
    SHARDS,
    ClickHouseServer,
    Cluster,
    clickhouse_cluster,  # noqa: F401 - a fixture
)
from tests.helpers import (
    ADMIN_BEARER,
    HANG_GUARD,
    LiveServer,
    eventually,
    make_config,
    run_eventrouter,
)
from tests.ingest_support import iso
from tests.queue_support import WorkerThread, amqp_env, to_toml, unique  # noqa: F401

# ruff: noqa: F811 - pytest fixtures are parameters

#: Events per request of the load, and the most requests it sends.
LOAD_BATCH = 10
LOAD_MAX_REQUESTS = 400
#: A shard stays down until the worker has had this many inserts fail: its backoff
#: (``PATIENT_RETRY``: 200 ms doubling) has then reached ``max_backoff`` and waited it
#: out. The outage's length is printed, not waited out: a fixed 20 s exercised nothing
#: more.
FAILED_INSERTS_DURING = 6
#: Load requests sent while the shard is down (at least).
REQUESTS_DURING = 20
#: The worker's retry block: patient enough to outlast the outage.
PATIENT_RETRY = {
    "attempts": 1000,
    "initial_backoff": "200ms",
    "max_backoff": "1s",
    "max_duration": "120s",
}


def cluster_sink(cluster: Cluster, database: str, name: str, **options) -> dict:
    return {
        "type": "clickhouse",
        "url": cluster.servers[0].url(database),
        "cluster": name,
        "replicated": name == REPLICAS,
        **options,
    }


@pytest.fixture
def database(clickhouse_cluster) -> Iterator[str]:
    """A database of this test's own, dropped on both servers afterwards."""
    name = unique("erc_")
    yield name
    for server in clickhouse_cluster.servers:
        if server.process is not None and server.process.poll() is None:
            server.query(f"DROP DATABASE IF EXISTS {name}")


def local_counts(cluster: Cluster, database: str, final: bool = True) -> list[int]:
    """Rows of ``events_local`` on each server (``FINAL``: each event once)."""
    sql = f"SELECT count() FROM events_local{' FINAL' if final else ''}"
    return [server.query(sql, database=database)[0][0] for server in cluster.servers]


def local_ids(server: ClickHouseServer, database: str) -> set[str]:
    """The message ids in ``server``'s own ``events_local`` (one replica's rows)."""
    rows = server.query("SELECT DISTINCT message_id FROM events_local", database=database)
    return {row[0] for row in rows}


def live(cluster: Cluster) -> ClickHouseServer:
    """A server that runs (the first)."""
    return next(s for s in cluster.servers if s.process and s.process.poll() is None)


def through_distributed(cluster: Cluster, database: str) -> tuple[int, int, int]:
    """(rows, rows with FINAL, distinct message ids) through the Distributed table."""
    [(rows,)] = live(cluster).query("SELECT count() FROM events", database=database)
    [(final, distinct)] = live(cluster).query(
        "SELECT count(), uniqExact(message_id) FROM events FINAL", database=database
    )
    return rows, final, distinct


def track(user: str, message_id: str | None = None) -> dict:
    return {
        "type": "track",
        "userId": user,
        "event": "Viewed",
        "messageId": message_id or unique("m"),
        "properties": {"plan": "pro"},
    }


# -- migrate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [SHARDS, REPLICAS])
def test_migrate_creates_local_and_distributed_tables_on_both_servers(
    clickhouse_cluster, database, tmp_path, name
):
    path = tmp_path / "cluster.toml"
    sink = cluster_sink(clickhouse_cluster, database, name, migrate_on_start=False)
    path.write_text(to_toml({"sinks": {"warehouse": sink}}))
    kind = "ReplicatedReplacingMergeTree" if name == REPLICAS else "ReplacingMergeTree"
    for _ in range(2):  # idempotent
        result = run_eventrouter("migrate", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert (
            f"warehouse (clickhouse): schema version 2, {kind} events_local ON CLUSTER {name} "
            "under Distributed events by sipHash64(message_id)"
        ) in result.stdout
    for server in clickhouse_cluster.servers:
        tables = dict(
            server.query(
                "SELECT name, engine FROM system.tables WHERE database = %(db)s",
                {"db": database},
            )
        )
        assert tables == {
            "events": "Distributed",
            "events_local": kind,
            "eventrouter_schema": "Distributed",
            "eventrouter_schema_local": kind.replace("Replacing", ""),
            # The hourly rollup (sinks/clickhouse_rollup.py): each server's view marks
            # the days of the rows inserted into its events_local.
            "events_dirty": "Distributed",
            "events_dirty_local": kind,
            "events_compacted": "Distributed",
            "events_compacted_local": kind,
            "events_hourly": "Distributed",
            "events_hourly_local": kind,
            "events_users": "Distributed",
            "events_users_local": kind,
            "events_hourly_paths": "Distributed",
            "events_hourly_paths_local": kind,
            "events_paths_compacted": "Distributed",
            "events_paths_compacted_local": kind,
            "events_users_paths": "Distributed",
            "events_users_paths_local": kind,
            "events_user_days": "Distributed",
            "events_user_days_local": kind,
            "events_user_days_compacted": "Distributed",
            "events_user_days_compacted_local": kind,
            "events_dirty_mv": "MaterializedView",
        }
        [(partition_key, sorting_key, create)] = server.query(
            "SELECT partition_key, sorting_key, engine_full FROM system.tables "
            "WHERE database = %(db)s AND name = 'events_local'",
            {"db": database},
        )
        assert partition_key == "toYYYYMM(timestamp)"
        assert sorting_key == "toDate(timestamp), source, type, event, message_id"
        if name == REPLICAS:
            assert f"'/clickhouse/tables/{{shard}}/{database}.events_local', '{{replica}}'" in (
                create
            )
        [(engine,)] = server.query(
            "SELECT engine_full FROM system.tables WHERE database = %(db)s AND name = 'events'",
            {"db": database},
        )
        assert engine == f"Distributed({name}, {database}, events_local, sipHash64(message_id))"
    # One schema version row, through the Distributed table.
    rows = clickhouse_cluster.servers[1].query(
        "SELECT version FROM eventrouter_schema", database=database
    )
    assert rows == [(2,)]


def test_a_plain_events_table_is_not_taken_for_a_distributed_one(
    clickhouse_cluster, database, tmp_path
):
    """A database made on one server before the cluster was configured: migrate says so."""
    url = clickhouse_cluster.servers[0].url(database)
    single = tmp_path / "single.toml"
    single.write_text(to_toml({"sinks": {"w": {"type": "clickhouse", "url": url}}}))
    assert run_eventrouter("migrate", "--config", str(single)).returncode == 0
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml({"sinks": {"w": cluster_sink(clickhouse_cluster, database, SHARDS)}}))
    result = run_eventrouter("migrate", "--config", str(path))
    assert result.returncode != 0
    assert "events is a ReplacingMergeTree table" in result.stderr
    assert "not a Distributed one" in result.stderr


# -- serve, query, dashboard, erasure --------------------------------------------------------
def test_events_spread_over_the_shards_read_once_and_erased_on_both(
    clickhouse_cluster, database, tmp_path
):
    sink = cluster_sink(clickhouse_cluster, database, SHARDS)
    raw = {"sinks": {"warehouse": sink}, "admin": {"store": "warehouse"}}
    server = LiveServer(make_config(tmp_path, raw)).start()
    try:
        users = [f"user-{i}" for i in range(8)]
        sent = [track(users[i % len(users)]) for i in range(40)]
        response = server.post("/v1/batch", {"batch": sent})
        assert response.status_code == 200, response.text
        # A redelivery of ten of them (same messageId, another request): one row each.
        response = server.post("/v1/batch", {"batch": sent[:10]})
        assert response.status_code == 200, response.text

        per_server = local_counts(clickhouse_cluster, database, final=False)
        print(f"\nrows per shard: {per_server} (50 sent, 10 of them twice)")
        assert sum(per_server) == 50 and all(per_server), per_server
        assert through_distributed(clickhouse_cluster, database)[1:] == (40, 40)
        ids = {body["messageId"] for body in sent}
        assert {event["message_id"] for event in server.events()} == ids
        assert len(server.events()) == 40
        one = sent[3]["messageId"]
        response = server.client.get(f"/api/v1/events/{one}", headers=ADMIN_BEARER)
        assert response.status_code == 200 and response.json()["message_id"] == one
        html = server.client.get("/admin/events", params={"event": "Viewed"}, headers=ADMIN_BEARER)
        assert html.status_code == 200
        assert sum(message_id in html.text for message_id in ids) >= 10

        # Erase user-0: its five events, wherever they landed. The count is of rows, as
        # on one server: two of the five were redelivered and no merge collapsed them.
        erased_ids = {body["messageId"] for body in sent if body["userId"] == "user-0"}
        result = erasure.delete_user(server.app.bus.sinks, "user-0", wait=60)
        assert [(s.status, s.events) for s in result.stores] == [("deleted", 5 + 2)]
        left = {event["message_id"] for event in server.events()}
        assert left == ids - erased_ids
        for db_server in clickhouse_cluster.servers:
            rows = db_server.query(
                "SELECT count() FROM events_local WHERE user_id = 'user-0'", database=database
            )
            assert rows == [(0,)]
        assert sum(local_counts(clickhouse_cluster, database)) == 35

        # The hourly rollup through the Distributed tables: events of earlier days (the
        # rollup holds whole days), counted the same before and after a compaction.
        older = [
            {
                **track(users[i % 3]),
                "timestamp": iso(datetime.now(UTC) - timedelta(days=2, minutes=30 * i)),
            }
            for i in range(30)
        ]
        response = server.post("/v1/batch", {"batch": older})
        assert response.status_code == 200, response.text
        layout = ClusterLayout(cluster=SHARDS, database=database)
        assert rollup_matches_scan(ClickHouseStore(sink["url"], layout)) == 35 + 30

        # A user's first and last seen (the user page), window by window through the
        # Distributed table, forward from the oldest part of any shard.
        times = sorted(
            datetime.fromisoformat(e["timestamp"]) for e in server.events(user_id=users[1])
        )
        reader = EventStore(ClickHouseStore(sink["url"], layout))
        try:
            with reader.engine.connect() as connection:
                hint = reader.dialect.oldest_hint(connection)
            assert hint is not None and hint <= times[0]
            assert reader.time_span(EventFilter(user_id=users[1])) == (times[0], times[-1])
        finally:
            reader.close()
    finally:
        server.stop()


def rollup_matches_scan(store: ClickHouseStore) -> int:
    """The counts read through the rollup and from events agree, with the days dirty and
    once compacted (every day then from the rollup, ``properties.plan``'s from the path
    rollup, its ``rollup_paths``); the count of the last three days."""
    reader, scanner = EventStore(store), EventStore(store, use_rollup=False)
    where = EventFilter(since=datetime.now(UTC) - timedelta(days=3, minutes=7))
    pro = EventFilter(since=where.since, paths=[PathCondition.parse("properties.plan", "pro")])
    try:
        assert reader.has_rollup() is True
        for _ in range(2):
            assert reader.count(where) == scanner.count(where)
            assert reader.top(where, "event") == scanner.top(where, "event")
            assert reader.count_by_time(where, 3600) == scanner.count_by_time(where, 3600)
            # events_users (a uniqExact state per day), and FINAL with PREWHERE event = ...
            for interval in ("day", "week"):
                users = reader.active_users(where, interval)
                assert users == scanner.active_users(where, interval) and users.series
                # events_users_paths: each day's users per value, merged over the shards'.
                users = reader.active_users(where, interval, "properties.plan")
                assert users == scanner.active_users(where, interval, "properties.plan")
                assert users.top
            viewed = EventFilter(since=where.since, event="Viewed")
            assert reader.count(viewed) == scanner.count(viewed)
            plans = reader.top(where, "properties.plan")
            assert plans == scanner.top(where, "properties.plan") and plans
            assert reader.count(pro) == scanner.count(pro) == sum(n for _, n in plans)
            # events_user_days over the shards (a day's rows on one), or events.
            cohorts = retention(reader, "Viewed", "Viewed", "day", where.since, None)
            assert cohorts == retention(scanner, "Viewed", "Viewed", "day", where.since, None)
            assert cohorts.cohorts
            time.sleep(1.05)  # marks of the second a compaction starts keep their day dirty
            client = client_for(store.url, store.layout)
            try:
                compact(client, store.layout, margin=0, paths=["properties.plan"])
            finally:
                client.disconnect()
        now = datetime.now(UTC)
        assert reader.dialect.rollup_gaps(None, now) == []
        assert reader.dialect.rollup_gaps(None, now, "properties.plan") == []
        assert reader._path_kept("properties.plan") is True
        assert reader.dialect.user_days_kept(None, None)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
        plan = reader.dimension("properties.plan")
        assert reader.dialect.users_per_value("properties.plan", plan, day, 5) is not None
        return reader.count(where)
    finally:
        reader.close()
        scanner.close()


def test_the_privacy_command_erases_on_the_cluster(clickhouse_cluster, database, tmp_path):
    sink = cluster_sink(clickhouse_cluster, database, REPLICAS)
    raw = {"sinks": {"warehouse": sink}}
    server = LiveServer(make_config(tmp_path, raw)).start()
    try:
        sent = [track("gone") for _ in range(3)] + [track("kept") for _ in range(2)]
        assert server.post("/v1/batch", {"batch": sent}).status_code == 200
    finally:
        server.stop()
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(raw))
    result = run_eventrouter("privacy", "delete", "--user-id", "gone", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "warehouse (clickhouse): deleted 3 event(s)"
    # Replicated: the mutation ran on both replicas.
    eventually(
        lambda: local_counts(clickhouse_cluster, database) == [2, 2],
        "the deletion on both replicas",
    )


def test_the_admin_tables_work_through_the_cluster(clickhouse_cluster, database, tmp_path):
    """Suppressions, signed-out sessions and used confirmations: local tables on both
    servers, read and written through the Distributed ones."""
    sink = cluster_sink(clickhouse_cluster, database, SHARDS)
    raw = {"sinks": {"warehouse": sink}}
    bus = Bus(make_config(tmp_path, raw), make_plugin_manager(make_config(tmp_path, raw)))
    warehouse = bus.sinks["warehouse"]
    warehouse.migrate()
    tables = warehouse.store().admin_tables()
    for table in ADMIN_TABLES:
        assert not tables.exists(table)
        tables.ensure(table)
    now = datetime.now(UTC)
    for i in range(6):  # spread over both shards by id
        assert tables.suppress("user_id", f"u{i}", "asked", now)
    assert not tables.suppress("user_id", "u0", "again", now)
    assert tables.unsuppress("user_id", "u1", now)
    assert sorted(tables.suppressed_ids()) == [("user_id", f"u{i}") for i in (0, 2, 3, 4, 5)]
    tables.revoke_session("sid-1", now + timedelta(hours=1))
    assert set(tables.revoked_sessions()) == {"sid-1"}
    assert tables.use_confirmation("nonce-1", now + timedelta(hours=1))
    assert not tables.use_confirmation("nonce-1", now + timedelta(hours=1))
    for server in clickhouse_cluster.servers:
        names = {
            row[0]
            for row in server.query(
                "SELECT name FROM system.tables WHERE database = %(db)s", {"db": database}
            )
        }
        assert {f"{table}_local" for table in ADMIN_TABLES} <= names
    per_server = [
        server.query("SELECT count() FROM suppressions_local", database=database)[0][0]
        for server in clickhouse_cluster.servers
    ]
    assert sum(per_server) == 7 and all(per_server), per_server
    warehouse.stop()


# -- faults ----------------------------------------------------------------------------------
class Load:
    """Batches of ``LOAD_BATCH`` track calls sent one after another to the edge until
    stopped (at most ``LOAD_MAX_REQUESTS``), counting what the edge acknowledged."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set() and self.requests < LOAD_MAX_REQUESTS:
                batch = [track(f"load-{self.requests % 7}") for _ in range(LOAD_BATCH)]
                self.requests += 1
                try:
                    status = client.post("/v1/batch", json={"batch": batch}).status_code
                except httpx.HTTPError:
                    status = 0
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.acknowledged |= {body["messageId"] for body in batch}
                self._stop.wait(0.05)

    def wait_for(self, requests: int) -> None:
        eventually(lambda: self.requests >= requests, f"{requests} load requests sent")


def failures(worker: WorkerThread) -> int:
    """Writes of the worker's sink that failed (each was retried)."""
    stats = worker.worker.bus.stats.get("sink:warehouse")
    return stats.failures if stats else 0


def stored_ids(cluster: Cluster, database: str) -> tuple[set[str], int, int]:
    """(message ids after FINAL, rows after FINAL, rows before) through ``events``."""
    server = live(cluster)
    ids = {row[0] for row in server.query("SELECT message_id FROM events FINAL", database=database)}
    rows, final, _ = through_distributed(cluster, database)
    return ids, final, rows


@pytest.fixture
def edge_and_worker(clickhouse_cluster, database, amqp_env):
    """An edge (queue mode, the system RabbitMQ in a namespace of the test's own) and a
    worker writing to the cluster with a patient retry block; the cluster name is the
    test's parameter, set by :func:`run_queue`."""

    def run_queue(name: str, **options) -> tuple[LiveServer, WorkerThread]:
        sink = cluster_sink(
            clickhouse_cluster,
            database,
            name,
            **options,
            batch={"max_events": 500, "timeout": "200ms"},
            retry=PATIENT_RETRY,
            # Created once below: an ON CLUSTER statement at each start would wait
            # for a server that a test has stopped.
            migrate_on_start=False,
        )
        raw = amqp_env.raw(sinks={"warehouse": sink}, admin={"store": "warehouse"})
        # The sink's tables exist before the edge reads them.
        path = amqp_env.write_config(raw)
        assert run_eventrouter("migrate", "--config", str(path)).returncode == 0
        edge = LiveServer(make_config(amqp_env.tmp_path, raw)).start()
        started.append(edge)
        worker = WorkerThread(make_config(amqp_env.tmp_path, raw))
        return edge, worker

    started: list[LiveServer] = []
    yield run_queue
    for edge in started:
        edge.stop()


def test_a_shard_down_under_load_loses_and_duplicates_nothing(
    clickhouse_cluster, database, edge_and_worker
):
    edge, worker = edge_and_worker(SHARDS)
    shard1, shard2 = clickhouse_cluster.servers
    sink = worker.worker.bus.sinks["warehouse"]
    with worker, Load(edge.url) as load:
        load.wait_for(10)
        eventually(lambda: sink.written, "the worker writing")
        assert not failures(worker)
        # The copies that the retries write on the surviving shard stay until FINAL
        # (a merge would collapse them before they could be counted).
        shard1.query(f"SYSTEM STOP MERGES {database}.events_local")
        shard2.kill()
        down = time.monotonic()
        requests_before = load.requests
        try:
            # The outage, under load: the worker's inserts fail and are retried.
            eventually(lambda: failures(worker), "an insert failing on the shard")
            # Half the rows are unreachable: the query API says so, not a partial page.
            read = edge.client.get("/api/v1/events", headers=ADMIN_BEARER)
            print(f"\nquery API with a shard down: {read.status_code} {read.text[:200]}")
            assert read.status_code == 503, read.text
            assert read.json()["code"] == "store_unavailable"
            assert read.headers["Retry-After"] == "5"
            # The worker retries with backoff, the edge acknowledging into the queue.
            eventually(
                lambda: failures(worker) >= FAILED_INSERTS_DURING,
                f"{FAILED_INSERTS_DURING} inserts failed and retried",
            )
            load.wait_for(requests_before + REQUESTS_DURING)
            sent_during = load.requests
        finally:
            shard2.start()  # the same data directory
            outage = time.monotonic() - down
        load.wait_for(sent_during + 10)
    # Load stopped: everything acknowledged reaches the store once the worker drained.
    acknowledged = load.acknowledged
    with WorkerThread(worker.worker.config):
        eventually(
            lambda: stored_ids(clickhouse_cluster, database)[0] >= acknowledged,
            "every acknowledged event stored",
        )
    ids, final, rows = stored_ids(clickhouse_cluster, database)
    per_shard = local_counts(clickhouse_cluster, database)
    shard1.query(f"SYSTEM START MERGES {database}.events_local")
    print(
        f"\nshard down {outage:.1f}s: requests {load.requests} {load.statuses}, "
        f"acknowledged {len(acknowledged)}, failed inserts retried {failures(worker)}, "
        f"stored {final} after FINAL ({rows} rows before FINAL: {rows - final} "
        f"duplicates), per shard {per_shard}"
    )
    assert acknowledged and ids >= acknowledged
    # An insert that failed may have written the surviving shard's part of its batch
    # (when the shard was stopped during it, most often), which the retry wrote again:
    # the copies are read as one.
    assert final == len(ids)
    assert all(per_shard)


@pytest.mark.parametrize("down", [1, 0], ids=["other-replica", "url-replica"])
def test_a_replica_down_writes_and_reads_go_on_then_it_catches_up(
    clickhouse_cluster, database, edge_and_worker, down
):
    """Replica ``down`` stops: 1, the one the sink's url does not name; 0, the one it
    names (clickhouse-driver then connects to the url's ``alt_hosts``)."""
    first, second = clickhouse_cluster.servers
    url = f"{first.url(database)}?alt_hosts=127.0.0.1:{second.port}"
    edge, worker = edge_and_worker(REPLICAS, url=url)
    replica = clickhouse_cluster.servers[down]
    sink = worker.worker.bus.sinks["warehouse"]
    with worker, Load(edge.url) as load:
        load.wait_for(10)
        eventually(lambda: sink.written, "the worker writing")
        replica.kill()
        try:
            before = set(load.acknowledged)
            load.wait_for(load.requests + 20)
            # Writes go on: events acknowledged during the outage are stored, and read
            # through the query API.
            during = load.acknowledged - before
            eventually(
                lambda: stored_ids(clickhouse_cluster, database)[0] >= during,
                "events written while a replica is down",
            )
            found = {event["message_id"] for event in edge.events()}
            assert during and found >= during
        finally:
            replica.start()
        load.wait_for(load.requests + 10)
    acknowledged = load.acknowledged
    # Counted on the replica that stayed up: the returned one fetches what it missed in
    # the background, and a read through the Distributed table on its server prefers its
    # own, possibly lagging, local table (seen in CI: 60 s were not enough).
    survivor = clickhouse_cluster.servers[1 - down]
    # The worker above stopped with the load: what the edge acknowledged into the queue
    # after its last batch waits there (on a busy machine, a few hundred events). A
    # worker drains it, as an operator's would after a restart.
    with WorkerThread(worker.worker.config):
        eventually(
            lambda: local_ids(survivor, database) >= acknowledged,
            "every acknowledged event stored",
        )
    eventually(
        lambda: len(set(local_counts(clickhouse_cluster, database))) == 1,
        "the returned replica caught up",
        guard=3 * HANG_GUARD,
    )
    ids, final, rows = stored_ids(clickhouse_cluster, database)
    per_replica = local_counts(clickhouse_cluster, database)
    print(
        f"\nreplica {down + 1} down: requests {load.requests} {load.statuses}, acknowledged "
        f"{len(acknowledged)}, stored {final} after FINAL ({rows} rows before), "
        f"per replica {per_replica}"
    )
    assert ids >= acknowledged and final == len(ids)
    assert per_replica == [final, final]
