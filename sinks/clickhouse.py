"""ClickHouse sink: ``events`` in a ``ReplacingMergeTree`` table, one columnar insert per batch.

Schema (``eventrouter migrate`` or the sink's start-up creates it, idempotently, through
clickhouse-sqlalchemy): the stored columns (:mod:`eventrouter.columns`), text and JSON as ``String``
(``''`` when absent: ClickHouse keeps no null map for them, and any of them may be part of
the sorting key), times as ``DateTime64(3, 'UTC')`` on servers that have it (20.1 on) and
``DateTime('UTC')`` before. ``PARTITION BY toYYYYMM(timestamp)`` and
``ORDER BY (toDate(timestamp), source, type, event, message_id)`` by default; the engine
is ``ReplacingMergeTree(received_at)``, so rows with the same sorting key collapse to
the copy received last when parts merge (``OPTIMIZE TABLE ... FINAL`` forces it; the
query layer reads with ``FINAL``). The key holds the event's *day*, not its time: an
SDK's retry of an event gets another skew-corrected ``timestamp`` (``receivedAt`` moved
on), and with the exact time in the key the two copies would never collapse. The key
must hold ``source`` as well as ``message_id``: a messageId is unique per source, and
one source must not replace another's event by reusing its id. A table whose key lacks
``source`` (schema version 1 allowed it) is rebuilt by ``migrate``
(:meth:`ClickHouseSink._rebuild`). Beside ``events``, ``migrate`` creates the hourly
rollup the dashboard's counts read, and the sink recounts its changed days every
``rollup_interval`` in a thread of its own (sinks/clickhouse_rollup.py).
docs/clickhouse.md explains each choice and the differences between server versions.

A write is one ``INSERT ... VALUES`` with the batch as one block of columns, sent over
clickhouse-driver's connection in the Native format that this module serialises (see
"the Native format" below; the driver's own columnar insert when the table's types are
not the ones created here). ClickHouse wants few, large inserts (at least 1,000 rows, about
one per second per table; every insert is a part on disk, merged later), so this sink
belongs under ``eventrouter worker`` with ``batch = { max_events = 50000, timeout = "1s" }``;
in embedded mode every request becomes an insert of its own.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, get_args

import msgspec
from clickhouse_driver import Client, defines
from clickhouse_driver.block import BlockInfo, ColumnOrientedBlock
from clickhouse_driver.protocol import ClientPacketTypes
from clickhouse_driver.varint import write_varint
from clickhouse_driver.writer import write_binary_str, write_binary_uint8
from clickhouse_sqlalchemy import Table, engines, types
from sqlalchemy import Column, Engine, MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateTable

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.columns import OPTIONAL_TIME_COLUMNS, STORED_COLUMNS, TIME_COLUMNS
from eventrouter.config import Duration
from eventrouter.events.commands import FREE_FORM, AnyCommand, Command, raw_json_of
from eventrouter.health import ComponentHealth
from eventrouter.scan import PURE_ENV
from eventrouter.sinks.clickhouse_cluster import (
    DEFAULT_REPLICA_NAME,
    DEFAULT_ZOOKEEPER_PATH,
    INSERT_SETTINGS,
    SHARDING_KEYS,
    ClusterLayout,
    check_cluster_options,
)
from eventrouter.sinks.clickhouse_rollup import (
    BACKFILL_SQL,
    DAY_KEY,
    MARKER,
    USERS,
    compact,
    has_rollup,
    keeps_days,
    marker_ddl,
)
from eventrouter.sinks.clickhouse_rollup import ddl as rollup_ddl
from eventrouter.sinks.clickhouse_store import (
    ClickHouseStore,
    clickhouse_engine,
    client_for,
    driver_url,
)
from eventrouter.store.rollup import check_rollup_paths

log = logging.getLogger("eventrouter.sinks.clickhouse")

#: Schema version this code creates; ``eventrouter_schema`` records what a database has.
#: 2: the sorting key holds ``source`` (a messageId is unique per source).
SCHEMA_VERSION = 2
#: Server versions that brought what the schema uses when it can.
DATETIME64_SINCE = (20, 1)
TTL_SINCE = (19, 6)
#: The sorting key: the day first (time-range filters prune whole days), then the
#: low-cardinality columns the dashboard filters on, then ``message_id`` so that every
#: event has a key of its own and the copies of a redelivered one collapse into one row
#: (``source`` with it: the same id from two sources is two events).
DEFAULT_ORDER_BY = "toDate(timestamp), source, type, event, message_id"
DEFAULT_PARTITION_BY = "toYYYYMM(timestamp)"
#: Columns every sorting key must hold (``order_by``).
KEY_COLUMNS = ("source", "message_id")
#: ``migrate``'s rebuild of a table whose sorting key lacks ``source``: the new table it
#: copies ``events`` into, and the name the old table keeps afterwards (for the
#: operator to check and drop).
REBUILD_TABLE = "events_migrating"
BACKUP_TABLE = "events_before_v2"

INSERT_SQL = f"INSERT INTO events ({', '.join(STORED_COLUMNS)}) VALUES"
#: The keys and definition of an existing ``events`` table.
TABLE_KEYS_SQL = (
    "SELECT partition_key, sorting_key, create_table_query FROM system.tables "
    "WHERE database = currentDatabase() AND name = 'events'"
)
#: The same of the local tables behind a Distributed ``events`` (``cluster``).
LOCAL_TABLE_KEYS_SQL = TABLE_KEYS_SQL.replace("'events'", "'events_local'")


def ttl_expression(seconds: float) -> str:
    # toDateTime: a TTL must be a DateTime, and DateTime64 arithmetic gives a DateTime64.
    return f"toDateTime(timestamp) + INTERVAL {int(seconds)} SECOND"


def ttl_sql(seconds: float, layout: ClusterLayout | None = None) -> str:
    """``MODIFY TTL`` of ``events``, or of its local tables on every server of a cluster."""
    action = f"MODIFY TTL {ttl_expression(seconds)}"
    return layout.alter("events", action) if layout else f"ALTER TABLE events {action}"


def split_keys(expression: str) -> list[str]:
    """``"(a, f(b, c))"`` → ``["a", "f(b, c)"]``: the top-level items of a key tuple."""
    expression = expression.strip()
    if expression.startswith("(") and _closing(expression, 0) == len(expression) - 1:
        expression = expression[1:-1]
    items, depth, start, quote = [], 0, 0, ""
    for i, char in enumerate(expression):
        if quote:
            quote = "" if char == quote and expression[i - 1] != "\\" else quote
        elif char in "'`\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(expression[start:i].strip())
            start = i + 1
    items.append(expression[start:].strip())
    return [item for item in items if item]


def _closing(expression: str, start: int) -> int:
    depth = 0
    for i in range(start, len(expression)):
        depth += {"(": 1, ")": -1}.get(expression[i], 0)
        if depth == 0:
            return i
    return -1


class ClickHouseOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: SQLAlchemy URL of the native protocol: ``clickhouse+native://user:pass@host:9000/db``.
    url: str
    #: ``PARTITION BY`` expression (ClickHouse SQL, from the operator's config).
    partition_by: str = DEFAULT_PARTITION_BY
    #: ``ORDER BY`` (sorting key) items, comma-separated; must contain ``source`` and
    #: ``message_id``.
    order_by: str = DEFAULT_ORDER_BY
    #: Rows whose ``timestamp`` is older than this are deleted by merges (``"400d"``);
    #: needs ClickHouse 19.6 or later. None by default.
    ttl: Duration | None = None
    #: Create or upgrade the schema when the sink starts (else: ``eventrouter migrate``).
    migrate_on_start: bool = True
    #: Keep the hourly rollup ``events_hourly`` (sinks/clickhouse_rollup.py) that the
    #: dashboard's counts read: ``migrate`` creates it, the sink compacts it.
    rollup: bool = True
    #: Seconds between two compactions of the rollup where the sink runs (``"30s"``):
    #: the days changed since are read from ``events`` until then.
    rollup_interval: Duration = 30.0
    #: JSON paths (at most 8, ``["properties.plan"]``) whose values the rollup counts per
    #: hour too (``events_hourly_paths``, sinks/clickhouse_rollup.py), so that the
    #: dashboard's breakdown by one, and a chart or count filtered by one value of one,
    #: read hourly counts instead of every event. Each costs the compactor one more pass
    #: over each changed day; a path added is counted for every stored day at the next
    #: compaction (read from ``events`` until then).
    rollup_paths: list[str] = []
    #: ClickHouse settings sent with every insert, e.g. ``{ async_insert = 1 }`` on 21.11+.
    insert_settings: dict[str, int | float | str | bool] = {}
    #: A cluster of ``<remote_servers>``: the tables are created ``ON CLUSTER`` it, local
    #: ones (``events_local``) under a ``Distributed`` table sharded by message_id
    #: (sinks/clickhouse_cluster.py). None: one server.
    cluster: str | None = None
    #: The local tables are ``Replicated*MergeTree`` (ZooKeeper, the servers' macros).
    replicated: bool = False
    #: ZooKeeper path of each replicated table: ``{database}`` and ``{table}`` are
    #: filled in by eventrouter, ``{shard}`` (and other macros) by each server.
    zookeeper_path: str = DEFAULT_ZOOKEEPER_PATH
    #: Replica name of each replicated table, a server macro by default.
    replica_name: str = DEFAULT_REPLICA_NAME

    def __post_init__(self) -> None:
        url = make_url(self.url)
        if url.get_backend_name() != "clickhouse" or url.get_driver_name() != "native":
            raise ValueError(
                "url: the clickhouse sink speaks the native protocol: write "
                "clickhouse+native://user:password@host:9000/database"
            )
        missing = [column for column in KEY_COLUMNS if not key_holds(self.order_by, column)]
        if missing:
            raise ValueError(
                f"order_by: must contain {' and '.join(missing)} (rows collapse on the whole "
                "sorting key, and a messageId is unique per source only)"
            )
        if self.ttl is not None and self.ttl < 1:
            raise ValueError("ttl: at least 1s")
        if self.rollup_interval < 1:
            raise ValueError("rollup_interval: at least 1s")
        check_rollup_paths(self.rollup_paths)
        check_cluster_options(self.cluster, self.replicated, self.zookeeper_path, self.replica_name)

    def layout(self) -> ClusterLayout | None:
        """The tables' layout over ``cluster`` (None: one server)."""
        if self.cluster is None:
            return None
        return ClusterLayout(
            cluster=self.cluster,
            database=make_url(self.url).database or "default",
            replicated=self.replicated,
            zookeeper_path=self.zookeeper_path,
            replica_name=self.replica_name,
        )


def key_holds(sorting_key: str, column: str) -> bool:
    """Whether an item of ``sorting_key`` uses ``column``."""
    return any(re.search(rf"\b{column}\b", key) for key in split_keys(sorting_key))


def server_version(client: Client) -> tuple[int, ...]:
    version = client.execute("SELECT version()")[0][0]
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def events_table(
    metadata: MetaData,
    *,
    datetime64: bool,
    partition_by: str = DEFAULT_PARTITION_BY,
    order_by: str = DEFAULT_ORDER_BY,
    ttl: float | None = None,
    name: str = "events",
) -> Table:
    """The ``events`` table as clickhouse-sqlalchemy declares it (under ``name``)."""
    time = types.DateTime64(3, "UTC") if datetime64 else types.DateTime("UTC")
    columns = []
    for column in STORED_COLUMNS:
        if column in OPTIONAL_TIME_COLUMNS:
            columns.append(Column(column, types.Nullable(time)))
        elif column in TIME_COLUMNS:
            columns.append(Column(column, time, nullable=False))
        else:
            columns.append(Column(column, types.String, nullable=False))
    engine = engines.ReplacingMergeTree(
        version="received_at",
        partition_by=text(partition_by),
        order_by=[text(key) for key in split_keys(order_by)],
        ttl=text(ttl_expression(ttl)) if ttl else None,
    )
    return Table(name, metadata, *columns, engine)


def schema_table(metadata: MetaData) -> Table:
    return Table(
        "eventrouter_schema",
        metadata,
        Column("version", types.UInt32, nullable=False),
        engines.MergeTree(order_by=text("version")),
    )


class _EpochCache(dict):
    """UTC datetime → the integer clickhouse-driver stores for it (seconds or ms since
    1970), memoised: the events of one request share ``received_at`` and often ``sent_at``."""

    EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

    def __init__(self, unit: timedelta) -> None:
        super().__init__()
        self.unit = unit

    def __missing__(self, value: datetime) -> int:
        number = (value - self.EPOCH) // self.unit
        self[value] = number
        return number


_json_encoder = msgspec.json.Encoder()


def _json_column(values: list[msgspec.Raw]) -> list[bytes]:
    """Each raw JSON value (the text the client sent, :meth:`Command.values`) as bytes:
    one ``encode_lines`` call, which copies the raw texts behind one another, split at
    its newlines: a call for the column instead of one per row. A raw text may hold
    newlines of its own (whitespace between its tokens: inside a JSON string a newline
    is always escaped); then the column is copied row by row."""
    column = _json_encoder.encode_lines(values).split(b"\n")[:-1]
    if len(column) != len(values):
        column = [bytes(value) for value in values]
    return column


#: Per column, the command classes that have the field (``Command.values()`` gives None
#: for the others). Looked up by class: ``getattr`` with a default pays for an
#: AttributeError on every missing field, the most of ``values()``'s 9 µs per event.
_CLASSES_WITH = {
    name: frozenset(cls for cls in get_args(AnyCommand) if name in cls.__struct_fields__)
    for name in ("event", "name", "group_id", "previous_id", "properties", "traits")
}


def _column_builders(
    commands: Sequence[Command], *, datetime64: bool
) -> dict[str, Callable[[], list]]:
    """By column name, a function that builds that column of the batch (see
    :func:`columns_of`), so that a column can be built just before it is sent."""
    unit = timedelta(milliseconds=1) if datetime64 else timedelta(seconds=1)
    # sent_at and received_at are a request's, shared by its events: memoised. An
    # event's own times are its alone, and a cache miss costs twice the arithmetic.
    epoch, since = _EpochCache(unit), _EpochCache.EPOCH
    kinds = set(map(type, commands))

    def optional_text(name: str) -> Callable[[], list]:
        # A field only some command classes have: attrgetter through map when every
        # command of the batch has it. (The fields every command has are read by list
        # comprehensions below: Python 3.11 specialises ``c.field`` on a slot, which
        # beats both attrgetter and getattr.)
        get, has = attrgetter(name), _CLASSES_WITH[name]
        if kinds <= has:
            return lambda: _or_empty(list(map(get, commands)))
        return lambda: [(get(c) or "") if type(c) in has else "" for c in commands]

    def optional_json(name: str) -> Callable[[], list]:
        has = _CLASSES_WITH[name]
        raw = f"{name}_json"  # the raw text, as sent (or encoded once if a stage changed it)
        if kinds <= has:  # every command has the field: one call for the column
            return lambda: _json_column([getattr(c, raw) for c in commands])
        return lambda: [bytes(getattr(c, raw)) if type(c) in has else b"" for c in commands]

    return {
        "message_id": lambda: [c.message_id for c in commands],
        "type": lambda: [c.kind for c in commands],
        "event": optional_text("event"),
        "name": optional_text("name"),
        "user_id": lambda: [c.user_id or "" for c in commands],
        "anonymous_id": lambda: [c.anonymous_id or "" for c in commands],
        "group_id": optional_text("group_id"),
        "previous_id": optional_text("previous_id"),
        "session_id": lambda: [c.session_id or "" for c in commands],
        "source": lambda: [c.source for c in commands],
        "properties": optional_json("properties"),
        "traits": optional_json("traits"),
        "context": lambda: _json_column([c.context_json for c in commands]),
        "timestamp": lambda: [(c.timestamp - since) // unit for c in commands],
        "original_timestamp": lambda: [
            None if (t := c.original_timestamp) is None else (t - since) // unit for c in commands
        ],
        "sent_at": lambda: [None if c.sent_at is None else epoch[c.sent_at] for c in commands],
        "received_at": lambda: [epoch[c.received_at] for c in commands],
    }


def _or_empty(values: list[str | None]) -> list[str]:
    """``values`` with ``''`` for None (ClickHouse keeps no null for text)."""
    if None in values:
        return ["" if value is None else value for value in values]
    return values


def columns_of(commands: Sequence[Command], *, datetime64: bool) -> list[list]:
    """The batch as one list per column of ``events``, in :data:`STORED_COLUMNS` order
    and in the form the driver writes without converting: text with ``''`` for absent,
    JSON as UTF-8 bytes (``b''`` for absent), times as integers since 1970 (ms, or
    seconds for ``DateTime``). The same values as ``Command.values()``, column-wise
    (tests/integration/test_clickhouse.py checks that they agree)."""
    builders = _column_builders(commands, datetime64=datetime64)
    return [builders[name]() for name in STORED_COLUMNS]


# -- the Native format -------------------------------------------------------------------
# A batch goes to the server as one block of ClickHouse's Native format, which this
# module writes itself, every column (docs/clickhouse.md, "The Native block", has the
# figures). The forms: String is each value's length as a LEB128 varint, then its UTF-8
# bytes; DateTime a UInt32 and DateTime64 an Int64, little-endian; Nullable(T) one byte
# per row (1: null), then T's column with 0 in the null rows.
#
# The per-value loops (String columns, the datetimes' conversion) run in C when the
# optional module eventrouter.sinks._native (sinks/_native.c) is built, and as the pure
# Python below when it is not, or when EVENTROUTER_PURE_PYTHON=1: the same bytes.
try:
    from eventrouter.sinks import _native
except ImportError:  # built without a C compiler
    _native = None
if os.environ.get(PURE_ENV):
    _native = None
_TIME_TYPECODES = {False: "I", True: "q"}  # DateTime: UInt32, DateTime64: Int64
_BIG_ENDIAN = sys.byteorder == "big"


#: Text columns with few distinct values in a batch (the same ones over and over, or
#: mostly ``''``): serialised through a memo of each value's Native form.
_FEW_VALUES = frozenset(
    ("type", "event", "name", "group_id", "previous_id", "session_id", "source")
)


def _varint(number: int) -> bytes:
    """``number`` as a LEB128 varint (a String value's length prefix)."""
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


#: The length prefix of every String value shorter than 16 KB (one or two bytes), by
#: length: looked up for a whole column with one ``map``.
_LENGTH_PREFIXES = [_varint(length) for length in range(1 << 14)]


def _few_values_column(values: list[str]) -> bytes:
    """A String column of text with few distinct values: the compiled loop, or each
    distinct value's Native form (length prefix, UTF-8 bytes) made once and joined."""
    if _native is not None:
        return _native.string_column(values)
    forms = {}
    for value in dict.fromkeys(values):
        data = value.encode()
        forms[value] = _varint(len(data)) + data
    return b"".join(map(forms.__getitem__, values))


def _string_column(values: Sequence[bytes | msgspec.Raw]) -> bytes:
    """A String column of many distinct values (UTF-8 bytes, or raw JSON as it came):
    each value's length prefix and its bytes. Compiled: one C loop
    (:mod:`eventrouter.sinks._native`); else interleaved in a list and joined, with no
    Python code run per value."""
    if _native is not None:
        return _native.string_column(values)
    lengths = list(map(len, values))
    if max(lengths, default=0) < len(_LENGTH_PREFIXES):
        prefixes = map(_LENGTH_PREFIXES.__getitem__, lengths)
    else:
        prefixes = map(_varint, lengths)
    parts: list[bytes | msgspec.Raw] = [b""] * (2 * len(values))
    parts[0::2] = prefixes
    parts[1::2] = values
    return b"".join(parts)


def _text_column(values: list[str]) -> bytes:
    """A String column of text: its UTF-8 bytes (strict, as the driver encodes)."""
    if _native is not None:
        return _native.string_column(values)
    return _string_column(list(map(str.encode, values)))


def _json_values(commands: Sequence[Command], name: str) -> list[bytes | msgspec.Raw]:
    """Free-form field ``name`` of every command as raw JSON, as it came (``b''`` for a
    command without the field): read by slot for the whole batch when every command
    has the field, row by row when only some do (a batch of track and identify calls)."""
    has = _CLASSES_WITH.get(name)
    if has is None or set(map(type, commands)) <= has:
        return raw_json_of(commands, name)
    raw = f"{name}_json"
    return [getattr(c, raw) if type(c) in has else b"" for c in commands]


def _time_column(values: list[int], datetime64: bool) -> bytes:
    numbers = array(_TIME_TYPECODES[datetime64], values)
    if _BIG_ENDIAN:
        numbers.byteswap()
    return numbers.tobytes()


def _nullable_time_column(values: list[int | None], datetime64: bool) -> bytes:
    if None not in values:
        return bytes(len(values)) + _time_column(values, datetime64)
    nulls = bytes([v is None for v in values])
    return nulls + _time_column([0 if v is None else v for v in values], datetime64)


def _native_type(name: str, datetime64: bool) -> str | None:
    """The type (as the server names it) whose Native form :func:`native_columns`
    writes for column ``name``; None for a column it does not know."""
    if name in TIME_COLUMNS:
        time = "DateTime64(3, 'UTC')" if datetime64 else "DateTime('UTC')"
        return f"Nullable({time})" if name in OPTIONAL_TIME_COLUMNS else time
    return "String" if name in STORED_COLUMNS else None


def _compiled_time_column(
    commands: Sequence[Command], name: str, datetime64: bool, nullable: bool
) -> bytes | None:
    """Time column ``name`` in one C loop over the commands' datetimes; None when the
    module is missing or a value is not a UTC datetime it converts (the Python code
    then converts it, or raises as it always did)."""
    if _native is None:
        return None
    return _native.time_column(_DATETIMES[name](commands), datetime64, nullable)


#: Each time column's datetimes (every command has the four fields).
_DATETIMES: dict[str, Callable[[Sequence[Command]], list]] = {
    "timestamp": lambda commands: [c.timestamp for c in commands],
    "original_timestamp": lambda commands: [c.original_timestamp for c in commands],
    "sent_at": lambda commands: [c.sent_at for c in commands],
    "received_at": lambda commands: [c.received_at for c in commands],
}


def native_columns(commands: Sequence[Command], *, datetime64: bool) -> Iterator[bytes]:
    """The columns of :func:`columns_of`, in order, each as the bytes of the Native form
    of :func:`_native_type`'s type. Built one by one as they are asked for, so that the
    server reads a column while the next is built. The JSON columns are the raw texts as
    they came, never copied one by one. A column of a field that no command of the batch
    has (``traits`` in a batch of ``track`` calls) is all ``''``: a zero length per row,
    without a pass over the batch."""
    builders = _column_builders(commands, datetime64=datetime64)
    kinds = set(map(type, commands))
    for name in STORED_COLUMNS:
        if name in _CLASSES_WITH and kinds.isdisjoint(_CLASSES_WITH[name]):
            yield bytes(len(commands))
        elif name in FREE_FORM:
            yield _string_column(_json_values(commands, name))
        elif name in TIME_COLUMNS:
            nullable = name in OPTIONAL_TIME_COLUMNS
            column = _compiled_time_column(commands, name, datetime64, nullable)
            if column is None:
                values = builders[name]()
                if nullable:
                    column = _nullable_time_column(values, datetime64)
                else:
                    column = _time_column(values, datetime64)
            yield column
        elif name in _FEW_VALUES:
            yield _few_values_column(builders[name]())
        else:
            yield _text_column(builders[name]())


def _send_native_block(
    connection: Any, columns_with_types: Sequence[tuple[str, str]], rows: int, data: Iterator
) -> None:
    """One Data packet, as ``Connection.send_data`` and ``BlockOutputStream.write`` send
    a block, with each column's serialised ``data`` written as it comes."""
    revision = connection.server_info.used_revision
    write_varint(ClientPacketTypes.DATA, connection.fout)
    if revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
        write_binary_str("", connection.fout)  # the table name: none
    stream = connection.block_out  # compressing or not, as the connection was set up
    out = stream.fout
    if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
        BlockInfo().write(out)
    write_varint(len(columns_with_types), out)
    write_varint(rows, out)
    for (name, type_), column in zip(columns_with_types, data, strict=True):
        write_binary_str(name, out)
        write_binary_str(type_, out)
        if revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
            write_binary_uint8(0, out)  # no custom (sparse) serialisation
        out.write(column)
    stream.finalize()


def insert_batch(
    client: Client, commands: Sequence[Command], *, datetime64: bool, settings: dict | None
) -> None:
    """``INSERT INTO events ... VALUES`` with ``commands`` as one block, in the steps of
    clickhouse-driver's ``Client.execute`` for an insert (query, the server's sample
    block, data, an empty block, end of stream), the block serialised by
    :func:`native_columns`. When the table's columns are not the ones this module
    creates (an operator changed a type), the driver serialises :func:`columns_of`."""
    with client.disconnect_on_error(INSERT_SQL, settings):
        connection = client.connection
        connection.send_query(INSERT_SQL)
        connection.send_external_tables(None)
        sample = client.receive_sample_block()
        expected = [(name, _native_type(name, datetime64)) for name in STORED_COLUMNS]
        if list(map(tuple, sample.columns_with_types)) == expected:
            data = native_columns(commands, datetime64=datetime64)
            _send_native_block(connection, expected, len(commands), data)
            connection.send_data(ColumnOrientedBlock())  # end of data
            client.receive_profile_events()
        else:
            columns = columns_of(commands, datetime64=datetime64)
            client.send_data(sample, columns, columnar=True)
        client.receive_end_of_insert_query()


class ClickHouseSink(Sink):
    """Stores every command into the ``events`` table of a ClickHouse database."""

    Options = ClickHouseOptions

    def __init__(self, name: str, config: Any, options: ClickHouseOptions) -> None:
        super().__init__(name, config, options)
        self.url = options.url
        self.database = make_url(options.url).database or "default"
        self.layout = options.layout()
        #: What every insert sends: on a cluster, a write returns once every shard has it.
        self.insert_settings = {
            **(INSERT_SETTINGS if self.layout else {}),
            **options.insert_settings,
        }
        self._clients: queue.SimpleQueue[Client] = queue.SimpleQueue()
        self.datetime64: bool | None = None
        self.version: tuple[int, ...] = ()
        self.written = 0
        self.inserts = 0
        self.last_error: str | None = None
        #: The rollup's tables exist (``migrate`` made them, or found them).
        self.rollup = False
        self._compactor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.compactions = 0

    # -- connections ---------------------------------------------------------------------
    @contextmanager
    def client(self) -> Iterator[Client]:
        """A native-protocol client of this sink's own (clickhouse-driver clients are not
        thread-safe, and the bus may run writes in several threads); a client that
        failed is dropped rather than reused."""
        try:
            client = self._clients.get_nowait()
        except queue.Empty:
            client = Client.from_url(driver_url(self.url))
        try:
            yield client
        except BaseException:
            client.disconnect()
            raise
        self._clients.put(client)

    def _engine(self, database: str | None = None) -> Engine:
        url = make_url(self.url)
        if database is not None:
            url = url.set(database=database)
        return clickhouse_engine(url.render_as_string(hide_password=False))

    def store(self) -> ClickHouseStore:
        return ClickHouseStore(self.url, self.layout)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, bus: Any) -> None:
        if not bus.gathers_batches:
            log.warning(
                "%s: ClickHouse in embedded mode: every request becomes an insert of its own, "
                "and ClickHouse wants about one insert per second per table; configure "
                "[queue] and run `eventrouter worker` (docs/clickhouse.md)",
                self.name,
            )
        if self.options.migrate_on_start:
            self.migrate()
        else:
            self._detect()
            if self.options.rollup:
                with self.client() as client:
                    self.rollup = has_rollup(client)
        if self.rollup:
            self._stopping.clear()
            self._compactor = threading.Thread(
                target=self._compact_periodically, name=f"{self.name}-rollup", daemon=True
            )
            self._compactor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._compactor is not None:
            self._compactor.join(timeout=60)
            self._compactor = None
        while True:
            try:
                self._clients.get_nowait().disconnect()
            except queue.Empty:
                return

    def _detect(self) -> None:
        """Server version, and the time type of an existing ``events`` table (a table
        created before an upgrade keeps its ``DateTime``)."""
        with self.client() as client:
            self.version = server_version(client)
            rows = client.execute(
                "SELECT type FROM system.columns WHERE database = %(db)s "
                "AND table = 'events' AND name = 'timestamp'",
                {"db": self.database},
            )
        if rows:
            self.datetime64 = rows[0][0].startswith("DateTime64")
        else:
            self.datetime64 = self.version >= DATETIME64_SINCE
        if self.options.ttl is not None and self.version < TTL_SINCE:
            raise RuntimeError(
                f"sinks.{self.name}.ttl needs ClickHouse 19.6 or later; this server is "
                f"{'.'.join(map(str, self.version))} (remove ttl, or drop old partitions "
                "with ALTER TABLE events DROP PARTITION)"
            )

    def migrate(self) -> str:
        """Create the database, ``events`` and ``eventrouter_schema`` if missing, and
        rebuild an ``events`` whose sorting key lacks ``source`` (idempotent;
        ``eventrouter migrate`` calls it). On a cluster: :meth:`_migrate_cluster`."""
        if self.layout is not None:
            return self._migrate_cluster(self.layout)
        server = self._engine("default")
        try:
            with server.connect() as connection:
                quoted = server.dialect.identifier_preparer.quote(self.database)
                connection.execute(text(f"CREATE DATABASE IF NOT EXISTS {quoted}"))
        finally:
            server.dispose()
        recovered = self._finish_interrupted_rebuild()
        self._detect()
        metadata = MetaData()
        schema = schema_table(metadata)
        engine = self._engine()
        rebuilt = None
        try:
            with engine.connect() as connection:
                for table in (self._events_table(metadata), schema):
                    connection.execute(CreateTable(table, if_not_exists=True))
                [(_, sorting_key, _)] = connection.execute(text(TABLE_KEYS_SQL)).all()
                if not key_holds(sorting_key, "source"):
                    rebuilt = self._rebuild(connection, sorting_key)
                current = connection.execute(text("SELECT max(version) FROM eventrouter_schema"))
                if (current.scalar() or 0) < SCHEMA_VERSION:
                    with self.client() as client:
                        client.execute(
                            "INSERT INTO eventrouter_schema (version) VALUES", [(SCHEMA_VERSION,)]
                        )
                self._check_table(connection)
        finally:
            engine.dispose()
        rolled = self._ensure_rollup()
        time_type = "DateTime64(3)" if self.datetime64 else "DateTime"
        done = (
            f"schema version {SCHEMA_VERSION}, ReplacingMergeTree, {time_type}, "
            f"ClickHouse {'.'.join(map(str, self.version))}"
        )
        return "; ".join(filter(None, [done, recovered, rebuilt, rolled]))

    def _migrate_cluster(self, layout: ClusterLayout) -> str:
        """``CREATE ... ON CLUSTER``: the database, then each table of the one-server
        schema as a local table on every server and a Distributed table over them
        (:meth:`ClusterLayout.create`). Tables created before the cluster was configured
        (a plain ``events``) are not converted: that is an error naming them."""
        server = client_for(self.url, database="default")
        try:
            server.execute(layout.create_database())
        finally:
            server.disconnect()
        self._detect()
        metadata = MetaData()
        engine = self._engine()
        try:
            statements = [
                str(CreateTable(table, if_not_exists=True).compile(engine))
                for table in (self._events_table(metadata), schema_table(metadata))
            ]
        finally:
            engine.dispose()
        with self.client() as client:
            for statement in statements:
                for sql in layout.create(statement):
                    client.execute(sql)
            tables = dict(
                client.execute(
                    "SELECT name, engine FROM system.tables WHERE database = %(db)s "
                    "AND name IN ('events', 'eventrouter_schema')",
                    {"db": self.database},
                )
            )
            wrong = {name: kind for name, kind in tables.items() if kind != "Distributed"}
            if wrong:
                raise RuntimeError(
                    f"sinks.{self.name}: cluster = {layout.cluster!r}, but "
                    + ", ".join(f"{name} is a {kind} table" for name, kind in wrong.items())
                    + f" in {self.database}, not a Distributed one: it was created before "
                    "the cluster was configured; copy its rows into the new tables "
                    '(docs/clickhouse.md, "A ClickHouse cluster") or use another database'
                )
            current = client.execute("SELECT max(version) FROM eventrouter_schema")[0][0]
            if (current or 0) < SCHEMA_VERSION:
                client.execute(
                    "INSERT INTO eventrouter_schema (version) VALUES",
                    [(SCHEMA_VERSION,)],
                    settings=INSERT_SETTINGS,
                )
        engine = self._engine()
        try:
            with engine.connect() as connection:
                self._check_table(connection)
        finally:
            engine.dispose()
        rolled = self._ensure_rollup()
        kind = "ReplicatedReplacingMergeTree" if layout.replicated else "ReplacingMergeTree"
        time_type = "DateTime64(3)" if self.datetime64 else "DateTime"
        done = (
            f"schema version {SCHEMA_VERSION}, {kind} events_local ON CLUSTER "
            f"{layout.cluster} under Distributed events by {SHARDING_KEYS['events']}, "
            f"{time_type}, ClickHouse {'.'.join(map(str, self.version))}"
        )
        return "; ".join(filter(None, [done, rolled]))

    # -- the hourly rollup (sinks/clickhouse_rollup.py) ----------------------------------
    def _ensure_rollup(self) -> str | None:
        """Create the rollup's tables and the view that marks changed days, if missing;
        a new rollup marks every day of ``events`` dirty (the first compaction counts
        them). What was done (None: the rollup is turned off)."""
        self.rollup = False
        if not self.options.rollup:
            return None
        if not keeps_days(self.options.order_by, split_keys):
            log.warning(
                "%s: no rollup: the sorting key does not start with %s, so copies of an "
                "event may span days; the dashboard's counts read events",
                self.name,
                DAY_KEY,
            )
            return f"no rollup (the sorting key lacks {DAY_KEY})"
        layout = self.layout
        client = client_for(self.url, layout)
        try:
            found = client.execute(
                "SELECT count() FROM system.tables WHERE database = currentDatabase() "
                "AND name IN %(names)s",
                {"names": (MARKER, USERS)},
            )[0][0]
            # The view and, since events_users was added, the users' table: a rollup
            # without the latter recounts every day (its compacted days hold no users).
            existed = found == 2
            for statement in rollup_ddl(self.options.ttl):
                for sql in [statement] if layout is None else layout.create(statement):
                    client.execute(sql)
            client.execute(marker_ddl(layout))
            if not existed:
                # After the view exists: a day written meanwhile is marked either way.
                client.execute(BACKFILL_SQL)
        finally:
            client.disconnect()
        self.rollup = True
        paths = self.options.rollup_paths
        # Counted by the compactor (each stored day whose latest compaction lacks one).
        counted = f", events_hourly_paths of {', '.join(paths)}" if paths else ""
        if existed:
            return f"rollup events_hourly{counted}"
        return (
            f"rollup events_hourly{counted} created (every stored day counted at the next "
            "compaction)"
        )

    def compact_rollup(self) -> int:
        """Recount the days changed since their last compaction into ``events_hourly``,
        and ``rollup_paths`` into ``events_hourly_paths`` (sinks/clickhouse_rollup.py);
        how many."""
        client = client_for(self.url, self.layout)
        try:
            days = compact(client, self.layout, paths=self.options.rollup_paths)
        finally:
            client.disconnect()
        self.compactions += 1
        return len(days)

    def _compact_periodically(self) -> None:
        """The compactor's thread: every ``rollup_interval`` until :meth:`stop`. A failed
        run (the server away) is logged and tried again at the next."""
        while not self._stopping.wait(self.options.rollup_interval):
            try:
                days = self.compact_rollup()
            except Exception as exc:  # the next run tries again
                log.warning("%s: rollup compaction failed: %s", self.name, exc)
            else:
                if days:
                    log.debug("%s: rollup: %d days recounted", self.name, days)

    def _events_table(self, metadata: MetaData, name: str = "events") -> Table:
        """``events`` (or a table like it) as configured, with the existing time type."""
        return events_table(
            metadata,
            datetime64=self.datetime64,
            partition_by=self.options.partition_by,
            order_by=self.options.order_by,
            ttl=self.options.ttl,
            name=name,
        )

    def _tables(self, client: Client) -> set[str]:
        return {
            row[0]
            for row in client.execute(
                "SELECT name FROM system.tables WHERE database = currentDatabase() "
                "AND name IN ('events', %(rebuild)s, %(backup)s)",
                {"rebuild": REBUILD_TABLE, "backup": BACKUP_TABLE},
            )
        }

    def _rebuild(self, connection: Any, sorting_key: str) -> str:
        """Schema 1 → 2 for a table whose sorting key lacks ``source``: a key cannot
        change in place, so ``events`` is copied into a new table with the configured
        key, and the two are swapped; what was done.

        1. ``CREATE TABLE events_migrating`` (the configured keys, the same time type);
        2. ``INSERT INTO events_migrating SELECT ... FROM events``: every row, in the
           server, without a lock (writers go on into ``events``);
        3. ``RENAME TABLE events TO events_before_v2, events_migrating TO events``;
        4. the rows written into the old table during step 2 are copied too: those of
           parts whose block numbers are above the highest before step 2 (copying a
           row twice is harmless: the copies share a sorting key and collapse).

        The old table is kept as ``events_before_v2`` for the operator to check and drop.
        Rows that collapsed under the old key (two sources' events with one id) were
        merged away before this ran and cannot come back. A copy left by an interrupted
        run is dropped first; one that another process is making now (its ``INSERT``
        is in ``system.processes``) makes this run fail, naming it."""
        name = self.name
        # Qualified, so that another process can tell this copy is running (below).
        target = f"{_quote(self.database)}.{REBUILD_TABLE}"
        with self.client() as client:
            tables = self._tables(client)
            if BACKUP_TABLE in tables:
                raise RuntimeError(
                    f"sinks.{name}: events' sorting key ({sorting_key}) lacks source, and "
                    f"{BACKUP_TABLE} exists already: check it, drop or rename it, and run "
                    "eventrouter migrate again"
                )
            if REBUILD_TABLE in tables:
                # Another process (a worker starting beside this one) copying now, or
                # the copy of an interrupted run.
                if _running(client, f"INSERT INTO {target}"):
                    raise RuntimeError(
                        f"sinks.{name}: another eventrouter process is rebuilding events "
                        f"(copying it into {REBUILD_TABLE}); start again once it is done"
                    )
                client.execute(f"DROP TABLE {REBUILD_TABLE}")
            started = time.monotonic()
            connection.execute(CreateTable(self._events_table(MetaData(), REBUILD_TABLE)))
            before = client.execute("SELECT count() FROM events")[0][0]
            high = _highest_block(client, "events")
            columns = ", ".join(STORED_COLUMNS)
            client.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM events")
            client.execute(f"RENAME TABLE events TO {BACKUP_TABLE}, {REBUILD_TABLE} TO events")
            late = _copy_blocks_after(client, BACKUP_TABLE, high)
        done = (
            f"sorting key ({sorting_key}) rebuilt as ({self.options.order_by}): {before} rows "
            f"copied (+{late} written during the copy) in {time.monotonic() - started:.1f} s; "
            f"the old table is {BACKUP_TABLE}: drop it once checked"
        )
        log.warning("%s: %s", name, done)
        return done

    def _finish_interrupted_rebuild(self) -> str | None:
        """After a crash between the two renames of :meth:`_rebuild` (``events``
        missing, both the copy and the old table there): finish the swap, and copy every
        row of the old table again (which of them the copy holds is not known; copies
        collapse)."""
        with self.client() as client:
            if self._tables(client) != {REBUILD_TABLE, BACKUP_TABLE}:
                return None
            client.execute(f"RENAME TABLE {REBUILD_TABLE} TO events")
            late = _copy_blocks_after(client, BACKUP_TABLE, -1)
        done = f"finished an interrupted rebuild: {late} rows of {BACKUP_TABLE} copied again"
        log.warning("%s: %s", self.name, done)
        return done

    def _check_table(self, connection: Any) -> None:
        """Keys cannot change on an existing table: say so when the config differs. A
        ``ttl`` can: set it when the table lacks this one."""
        keys = LOCAL_TABLE_KEYS_SQL if self.layout is not None else TABLE_KEYS_SQL
        row = connection.execute(text(keys)).one()
        partition_key, sorting_key, create = row
        for key, actual, wanted in (
            ("partition_by", partition_key, self.options.partition_by),
            ("order_by", sorting_key, self.options.order_by),
        ):
            if _normalised(actual) != _normalised(wanted):
                log.warning(
                    "%s: events exists with %s %r, not the configured %r; a table's keys "
                    "cannot be changed (create a new table and INSERT ... SELECT)",
                    self.name,
                    key.upper().replace("_", " "),
                    actual,
                    wanted,
                )
        ttl = self.options.ttl
        if ttl is None:
            if " TTL " in create:
                log.warning(
                    "%s: events has a TTL, and ttl is not configured: rows still expire",
                    self.name,
                )
            return
        if f"toIntervalSecond({int(ttl)})" not in create:
            log.info("%s: setting TTL of events to %ds", self.name, int(ttl))
            connection.execute(text(ttl_sql(ttl, self.layout)))

    # -- writing -----------------------------------------------------------------------
    def write(self, commands: Sequence[Command]) -> None:
        if not commands:
            return
        if self.datetime64 is None:
            self._detect()
        try:
            with self.client() as client:
                insert_batch(
                    client,
                    commands,
                    datetime64=self.datetime64,
                    settings=self.insert_settings or None,
                )
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self.inserts += 1
        self.written += len(commands)

    # -- health ------------------------------------------------------------------------
    def health(self) -> ComponentHealth:
        def probe() -> None:
            with self.client() as client:
                client.execute("SELECT 1")

        stats = {"written": self.written, "inserts": self.inserts}
        return self.probed_health(probe, stats, last_error=self.last_error)


def _quote(name: str) -> str:
    """A ClickHouse identifier in backquotes."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _running(client: Client, text: str) -> bool:
    """Whether a query whose text holds ``text`` is running on the server (this one,
    whose text holds it too, excepted)."""
    rows = client.execute(
        "SELECT count() FROM system.processes "
        "WHERE position(query, %(text)s) > 0 AND position(query, 'system.processes') = 0",
        {"text": text},
    )
    return rows[0][0] > 0


def _highest_block(client: Client, table: str) -> int:
    """The highest block number in ``table``'s parts (-1: none). A plain MergeTree
    numbers its inserts from one counter: a part written later has higher numbers."""
    rows = client.execute(
        "SELECT max(max_block_number), count() FROM system.parts "
        "WHERE database = currentDatabase() AND table = %(table)s AND active",
        {"table": table},
    )
    highest, parts = rows[0]
    return int(highest) if parts else -1


def _copy_blocks_after(client: Client, table: str, high: int) -> int:
    """Copy into ``events`` the rows of ``table`` whose part holds a block numbered
    above ``high`` (its name is ``partition_min_max_level``, and a merged part spans
    its sources' numbers); how many."""
    columns = ", ".join(STORED_COLUMNS)
    where = f"toInt64(splitByChar('_', _part)[3]) > {int(high)}"
    [(count,)] = client.execute(f"SELECT count() FROM {table} WHERE {where}")
    if count:
        client.execute(
            f"INSERT INTO events ({columns}) SELECT {columns} FROM {table} WHERE {where}"
        )
    return int(count)


def _normalised(expression: str) -> list[str]:
    return [re.sub(r"\s+", "", key) for key in split_keys(expression)]


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"clickhouse": ClickHouseSink}
