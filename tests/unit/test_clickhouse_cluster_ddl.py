"""The statements a clickhouse sink with ``cluster = "NAME"`` sends (sinks/clickhouse_cluster.py),
checked without a server: the local table keeps the one-server table's columns, keys and
engine (replicated when configured), the Distributed table shards by the row's key, every
name from the config is quoted; each statement parses on a current ClickHouse (chdb), and
the local table is created there. tests/cluster/ runs them on two 18.16 servers."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import MetaData
from sqlalchemy.schema import CreateTable

from eventrouter.bus.bus import Bus, make_plugin_manager
from eventrouter.config import ConfigError
from eventrouter.sinks.clickhouse import events_table, schema_table, ttl_sql
from eventrouter.sinks.clickhouse_cluster import ClusterLayout
from eventrouter.sinks.clickhouse_store import DDL, clickhouse_engine, cluster_size_sql
from tests.helpers import make_config

URL = "clickhouse+native://default:@127.0.0.1:9000/analytics"


def single_node(datetime64: bool = True) -> list[str]:
    """``migrate``'s one-server statements, as clickhouse-sqlalchemy compiles them."""
    engine = clickhouse_engine(URL)
    metadata = MetaData()
    tables = (events_table(metadata, datetime64=datetime64), schema_table(metadata))
    try:
        return [str(CreateTable(t, if_not_exists=True).compile(engine)) for t in tables]
    finally:
        engine.dispose()


def squeeze(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def test_events_on_a_replicated_cluster():
    layout = ClusterLayout(cluster="er_replicas", database="analytics", replicated=True)
    events, _ = single_node(datetime64=False)
    local, distributed = layout.create(events)
    assert squeeze(local).startswith(
        "CREATE TABLE IF NOT EXISTS `analytics`.`events_local` ON CLUSTER `er_replicas` "
        "( message_id String,"
    )
    assert squeeze(local).endswith(
        ") ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/analytics.events_local', '{replica}', received_at) "
        "PARTITION BY toYYYYMM(timestamp) "
        "ORDER BY (toDate(timestamp), source, type, event, message_id)"
    )
    # The columns of the one-server table, unchanged.
    columns = squeeze(events)[squeeze(events).index("(") : squeeze(events).index(") ENGINE")]
    assert columns in squeeze(local)
    assert distributed == (
        "CREATE TABLE IF NOT EXISTS `analytics`.`events` ON CLUSTER `er_replicas` "
        "AS `analytics`.`events_local` ENGINE = Distributed(`er_replicas`, `analytics`, "
        "`events_local`, sipHash64(message_id))"
    )


def test_a_cluster_without_replication_keeps_the_engine():
    layout = ClusterLayout(cluster="er_shards", database="analytics")
    events, schema = single_node()
    local, _ = layout.create(events)
    assert "ENGINE = ReplacingMergeTree(received_at)" in squeeze(local)
    local, distributed = layout.create(schema)
    assert squeeze(local).endswith("ENGINE = MergeTree() ORDER BY version")
    assert distributed.endswith("`eventrouter_schema_local`, rand())")


@pytest.mark.parametrize("table", sorted(DDL))
def test_admin_tables_are_sharded_by_their_key(table):
    layout = ClusterLayout(cluster="c", database="d", replicated=True)
    local, distributed = layout.create(DDL[table])
    assert f"`d`.`{table}_local` ON CLUSTER `c`" in local
    assert f"'/clickhouse/tables/{{shard}}/d.{table}_local', '{{replica}}'" in local
    key = {"suppressions": "id", "admin_revoked_sessions": "sid", "confirmations_used": "nonce"}
    assert distributed.endswith(f"`{table}_local`, sipHash64({key[table]}))")


def test_names_from_the_config_are_quoted():
    layout = ClusterLayout(
        cluster="c", database="we`ird'db", replicated=True, zookeeper_path="/ch/{table}'x"
    )
    local, distributed = layout.create(DDL["suppressions"])
    assert "`we\\`ird'db`.`suppressions_local`" in local
    assert "'/ch/suppressions_local\\'x'" in local
    assert "AS `we\\`ird'db`.`suppressions_local`" in distributed
    assert "database = 'we`ird\\'db'" in cluster_size_sql(layout)


def test_mutations_go_to_the_local_tables_on_the_cluster():
    layout = ClusterLayout(cluster="c", database="d")
    assert layout.alter("events", "DELETE WHERE 1") == (
        "ALTER TABLE `d`.`events_local` ON CLUSTER `c` DELETE WHERE 1"
    )
    assert ttl_sql(86400, layout).startswith("ALTER TABLE `d`.`events_local` ON CLUSTER `c`")
    assert ttl_sql(86400) == (
        "ALTER TABLE events MODIFY TTL toDateTime(timestamp) + INTERVAL 86400 SECOND"
    )


@pytest.mark.parametrize("replicated", [False, True])
def test_the_statements_parse_on_a_current_clickhouse(replicated):
    from chdb import session

    layout = ClusterLayout(cluster="er", database="eventrouter", replicated=replicated)
    statements = [layout.create_database()]
    for single in single_node() + list(DDL.values()):
        statements += layout.create(single)
    statements += [
        layout.alter("events", "DELETE WHERE user_id IN ('u')"),
        layout.alter("confirmations_used", "DROP PARTITION 20260101"),
        ttl_sql(86400, layout),
        cluster_size_sql(layout),
        f"SELECT count() FROM {layout.everywhere('mutations')} WHERE is_done = 0",
    ]
    db = session.Session()
    try:
        for statement in statements:
            db.query(f"EXPLAIN AST {statement}")
        if not replicated:  # no ZooKeeper, no cluster here: the local tables alone
            db.query("CREATE DATABASE IF NOT EXISTS eventrouter")
            for single in single_node():
                local = layout.create(single)[0].replace(" ON CLUSTER `er`", "")
                db.query(local)
                db.query(local)  # idempotent
    finally:
        db.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicated": True}, "replicated: needs cluster"),
        ({"cluster": "a b"}, "cluster: 'a b' is not a cluster name"),
        ({"cluster": "c", "replicated": True, "zookeeper_path": "/x/{shard}"}, "must contain"),
        ({"cluster": "c", "replicated": True, "zookeeper_path": "x/{table}"}, "starts with /"),
        ({"cluster": "c", "shards": 2}, "sinks.w.shards: unknown key"),
    ],
)
def test_bad_cluster_options_are_config_errors(tmp_path, options, message):
    sink = {"type": "clickhouse", "url": URL, **options}
    config = make_config(tmp_path, {"sinks": {"w": sink}})
    with pytest.raises(ConfigError, match=re.escape(message)):
        Bus(config, make_plugin_manager(config))


def test_a_single_server_has_no_layout():
    from eventrouter.sinks.clickhouse import ClickHouseOptions

    assert ClickHouseOptions(url=URL).layout() is None
    layout = ClickHouseOptions(url=URL, cluster="c", replicated=True).layout()
    assert layout == ClusterLayout(cluster="c", database="analytics", replicated=True)
