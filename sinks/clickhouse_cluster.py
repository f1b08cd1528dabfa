"""How the ClickHouse store lays its tables over a cluster (``cluster = "NAME"`` on a
clickhouse sink): each table the single-node store has becomes two, created ``ON CLUSTER``:

- ``NAME_local`` on every server, with the single-node table's columns, keys and engine,
  the engine ``Replicated...`` (a ZooKeeper path and a replica name) when the cluster
  replicates;
- ``NAME``, a ``Distributed`` table over the local ones, sharded by a hash of the row's
  key (``sipHash64(message_id)`` for ``events``): every copy of one event lands on one
  shard, where ``ReplacingMergeTree`` collapses it and ``FINAL`` reads it once.

The rest of the code reads and writes ``NAME``, as on one server; mutations (erasure,
``DROP PARTITION``, ``MODIFY TTL``) go ``ON CLUSTER`` to the local tables, as a
Distributed table has no rows of its own. Inserts carry ``insert_distributed_sync = 1``:
the insert returns once every shard has its part, so an acknowledged batch is stored.
Every statement runs on 18.16 (Debian's) and on a current ClickHouse (docs/clickhouse.md,
"A ClickHouse cluster").
"""

from __future__ import annotations

import re

import msgspec

#: What a local table's name ends with.
LOCAL_SUFFIX = "_local"
#: The ZooKeeper path of each replicated table: ``{database}`` and ``{table}`` (the local
#: table's name) are replaced here, ``{shard}`` (and any other macro) by each server.
DEFAULT_ZOOKEEPER_PATH = "/clickhouse/tables/{shard}/{database}.{table}"
DEFAULT_REPLICA_NAME = "{replica}"
#: A cluster's name as ``<remote_servers>`` spells it (it is written into SQL).
CLUSTER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
#: Each Distributed table's sharding key: rows that collapse into one must share it.
SHARDING_KEYS = {
    "events": "sipHash64(message_id)",
    "eventrouter_schema": "rand()",
    "suppressions": "sipHash64(id)",
    "admin_revoked_sessions": "sipHash64(sid)",
    "confirmations_used": "sipHash64(nonce)",
    # The rollup (sinks/clickhouse_rollup.py): each key's versions on one shard (FINAL).
    "events_dirty": "rand()",
    "events_compacted": "rand()",
    "events_hourly": "toUInt32(hour)",
    "events_users": "toUInt32(day)",
    "events_hourly_paths": "toUInt32(hour)",
    "events_paths_compacted": "rand()",
    "events_users_paths": "toUInt32(day)",
    "events_user_days": "toUInt32(day)",
    "events_user_days_compacted": "rand()",
}
#: Sent with every insert through a Distributed table: it returns once every shard
#: has its rows (else the server queues them on its disk and answers at once).
INSERT_SETTINGS = {"insert_distributed_sync": 1}
#: Sent with every query of the query layer: a page's ``IN (subquery)`` over the
#: Distributed table is run once, by the server asked, and its result sent to each
#: shard (``GLOBAL IN``); the default (``deny``) refuses it.
QUERY_SETTINGS = {"distributed_product_mode": "global"}

_CREATE = re.compile(
    r"^\s*CREATE TABLE IF NOT EXISTS\s+(?P<name>\w+)\s*(?P<columns>\(.*\))\s*"
    r"ENGINE\s*=\s*(?P<engine>\w*MergeTree)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$",
    re.DOTALL,
)


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backquotes."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClusterLayout(msgspec.Struct, frozen=True, kw_only=True):
    """Where a store's tables live on a cluster: what the sink's options say."""

    #: The cluster (``<remote_servers>``) every table is created on.
    cluster: str
    #: The database of the tables (the sink's URL's).
    database: str
    #: Local tables replicate through ZooKeeper (``Replicated*MergeTree``).
    replicated: bool = False
    zookeeper_path: str = DEFAULT_ZOOKEEPER_PATH
    replica_name: str = DEFAULT_REPLICA_NAME

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER {quote_identifier(self.cluster)}"

    def local(self, table: str) -> str:
        """The local table behind the Distributed table ``table``."""
        return table + LOCAL_SUFFIX

    def qualified(self, table: str) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(table)}"

    def create_database(self) -> str:
        return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(self.database)} {self.on_cluster}"

    def zookeeper_path_of(self, table: str) -> str:
        """The ZooKeeper path of the local table ``table`` (macros left for the server)."""
        return self.zookeeper_path.replace("{database}", self.database).replace("{table}", table)

    def create(self, single_node: str, table: str | None = None) -> list[str]:
        """The two statements that stand for ``single_node`` (a ``CREATE TABLE IF NOT
        EXISTS NAME (columns) ENGINE = ...MergeTree(...) ...`` of the one-server store) on
        the cluster: the local table (same columns, keys and settings; replicated when
        configured), then the Distributed table named ``NAME``."""
        match = _CREATE.match(single_node)
        if match is None:
            raise ValueError(f"not a MergeTree table definition: {single_node!r}")
        name = table or match["name"]
        local = self.local(name)
        engine, args = match["engine"], (match["args"] or "").strip()
        if self.replicated:
            replication = [
                quote_string(self.zookeeper_path_of(local)),
                quote_string(self.replica_name),
            ]
            args = ", ".join(replication + ([args] if args else []))
            engine = "Replicated" + engine
        local_sql = (
            f"CREATE TABLE IF NOT EXISTS {self.qualified(local)} {self.on_cluster} "
            f"{match['columns']} ENGINE = {engine}({args}){match['rest'].rstrip()}"
        )
        distributed = (
            f"CREATE TABLE IF NOT EXISTS {self.qualified(name)} {self.on_cluster} "
            f"AS {self.qualified(local)} ENGINE = Distributed({quote_identifier(self.cluster)}, "
            f"{quote_identifier(self.database)}, {quote_identifier(local)}, "
            f"{SHARDING_KEYS[name]})"
        )
        return [local_sql, distributed]

    def alter(self, table: str, action: str) -> str:
        """``ALTER TABLE`` of ``table``'s local tables on every server."""
        return f"ALTER TABLE {self.qualified(self.local(table))} {self.on_cluster} {action}"

    def everywhere(self, system_table: str) -> str:
        """A system table of every shard (one replica each), as a table function."""
        return f"cluster({quote_string(self.cluster)}, system, {system_table})"


def check_cluster_options(
    cluster: str | None, replicated: bool, zookeeper_path: str, replica_name: str
) -> None:
    """The config errors of a clickhouse sink's cluster keys (no I/O)."""
    if cluster is None:
        if replicated:
            raise ValueError("replicated: needs cluster (the cluster the tables replicate on)")
        return
    if not CLUSTER_NAME.fullmatch(cluster):
        raise ValueError(
            f"cluster: {cluster!r} is not a cluster name of <remote_servers> "
            "(letters, digits, _ . -, not starting with a digit)"
        )
    if replicated:
        if "{table}" not in zookeeper_path:
            raise ValueError(
                "zookeeper_path: must contain {table}, else every table would share "
                "one ZooKeeper path"
            )
        if not zookeeper_path.startswith("/"):
            raise ValueError("zookeeper_path: a ZooKeeper path starts with /")
        if not replica_name:
            raise ValueError("replica_name: must not be empty (default {replica})")
