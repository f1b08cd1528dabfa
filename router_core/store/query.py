"""The store query layer: one API over every SQL store (SQLite, PostgreSQL, ClickHouse:
the same SQLAlchemy Core expressions, with each dialect's own JSON access).

It serves ``GET /api/v1/events`` and the admin dashboard. Results come newest first by
``(timestamp, message_id, source)`` with keyset pagination: the cursor is the last row's
key, so a page costs the same however deep it is and rows arriving meanwhile never shift
it. Every filter value is a bound parameter. A messageId is unique per source only: an
event is named by its source and its id (:meth:`EventStore.get`).
"""

from __future__ import annotations

import base64
import functools
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy.exc
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Integer,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from eventrouter.store.db import make_engine
from eventrouter.store.schema import events, metadata

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
FILTER_COLUMNS = ("type", "event", "user_id", "anonymous_id", "session_id", "source")


class InvalidQuery(ValueError):
    """A filter value the store cannot use; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AmbiguousEvent(LookupError):
    """A message id asked for without a source is stored by several sources."""

    def __init__(self, message_id: str, sources: Sequence[str]) -> None:
        self.message_id = message_id
        #: Every source that has an event of that id, sorted.
        self.sources = sorted(sources)
        #: What is ambiguous, naming the id and the sources.
        self.summary = (
            f"message_id: {len(self.sources)} sources have an event {message_id!r} "
            f"({', '.join(map(repr, self.sources))})"
        )
        super().__init__(f"{self.summary}: name one with source")


#: JSON columns a path condition may address, and the shape of one path segment.
PATH_COLUMNS = ("properties", "traits", "context")
_SEGMENT = re.compile(r"^[A-Za-z0-9_$@:-]{1,100}$")
#: Most path conditions in one query.
MAX_PATH_CONDITIONS = 10


class PathCondition(msgspec.Struct, frozen=True):
    """``properties.plan = "pro"``: the JSON value at ``path`` under ``column``, as text
    (strings as they are, numbers and booleans as JSON writes them), equals ``value``."""

    column: str
    path: tuple[str, ...]
    value: str

    @classmethod
    def parse(cls, name: str, value: str) -> PathCondition:
        """From a query parameter such as ``properties.plan`` = ``pro``.

        :raises InvalidQuery: an unknown column or a malformed path."""
        column, _, rest = name.partition(".")
        segments = tuple(rest.split(".")) if rest else ()
        if column not in PATH_COLUMNS or not segments:
            raise InvalidQuery(name, "write properties.KEY, traits.KEY or context.KEY")
        for segment in segments:
            if not _SEGMENT.match(segment):
                raise InvalidQuery(
                    name, f"path segment {segment!r}: letters, digits and _$@:- only"
                )
        return cls(column, segments, value)


class EventFilter(msgspec.Struct, kw_only=True):
    type: str | None = None
    event: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    source: str | None = None
    #: Inclusive lower bound on ``timestamp``.
    since: datetime | None = None
    #: Exclusive upper bound on ``timestamp``.
    until: datetime | None = None
    #: Conditions on JSON paths, all of which must hold.
    paths: list[PathCondition] = []


class StoreSize(msgspec.Struct):
    dialect: str
    events: int
    #: On-disk bytes of the events (and, on PostgreSQL, of every partition and index).
    bytes: int | None


_POSTGRES_SIZE_SQL = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
    "WHERE c.relkind = 'r' AND (c.relname = 'events' OR c.relname LIKE 'events\\_%') "
    "AND c.relnamespace = to_regnamespace(current_schema())"
)
_CLICKHOUSE_SIZE_SQL = (
    "SELECT sum(bytes) FROM system.parts WHERE database = currentDatabase() "
    "AND table = 'events' AND active"
)


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None


def _aware(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (stores hand back naive UTC or aware)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Sources :meth:`EventStore.get` reads of an id asked for without a source: enough to
#: name those that share it in an ambiguity error.
AMBIGUITY_SOURCES = 20
#: How far back a tail of a server store looks for rows committed after later ones.
TAIL_LOOKBACK = timedelta(seconds=5)


class TailPosition(msgspec.Struct, kw_only=True):
    """How far a live tail has read a store (see :meth:`EventStore.stored_since`)."""

    rowid: int = 0
    received_at: datetime = datetime.min.replace(tzinfo=UTC)
    #: Events shown by ``(source, message_id)`` (one source's id does not hide another's).
    seen: dict[tuple[str, str], datetime] = {}


class Page(msgspec.Struct):
    events: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(timestamp: datetime, message_id: str, source: str | None = None) -> str:
    """The key of a page's last row as an opaque cursor: ``(timestamp, message_id,
    source)`` (two events may share a time and an id when their sources differ)."""
    key = [timestamp.isoformat(), message_id]
    if source is not None:
        key.append(source)
    raw = msgspec.json.encode(key)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, str | None]:
    """``(timestamp, message_id, source)``; ``source`` is None in a cursor of an
    earlier release (which named no source)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = msgspec.json.decode(raw, type=list[str])
        if len(key) not in (2, 3):
            raise ValueError(key)
        timestamp, message_id, *source = key
        return datetime.fromisoformat(timestamp), message_id, (source or [None])[0]
    except (ValueError, msgspec.DecodeError):
        raise InvalidQuery("cursor", "not a cursor returned by this API") from None


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def iso_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


_TIME_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at")


def row_to_event(row: Any) -> dict[str, Any]:
    """A stored row as the API shows it: JSON columns as objects, times ISO 8601 UTC."""
    event = dict(row._mapping)
    for column in _TIME_COLUMNS:
        event[column] = iso_utc(event[column])
    return event


def json_text(
    dialect: str, column: str, path: Sequence[str], *, json_extract: bool = True
) -> ColumnElement:
    """The JSON value at ``path`` in ``column`` as text, in the dialect's own JSON access.

    The path is always a bound parameter (its segments are validated besides), never
    SQL text: PostgreSQL gets ``column #>> :path`` with a text array; SQLite gets
    ``json_extract`` with a JSON-path string, with booleans spelled as JSON spells them
    (``json_extract`` alone gives 1 and 0). ClickHouse gets ``JSONExtract*`` with one
    argument per segment, or, on servers without them (``json_extract=False``: before
    19.x), a chain of ``visitParamExtract*`` (see :func:`_clickhouse_json_text`).
    """
    target = events.c[column]
    if dialect == "postgresql":
        return target.op("#>>")(literal(list(path), ARRAY(Text)))
    if dialect == "sqlite":
        json_path = literal("$" + "".join(f'."{segment}"' for segment in path))
        kind = func.json_type(target, json_path)
        return case(
            (kind == "true", "true"),
            (kind == "false", "false"),
            else_=cast(func.json_extract(target, json_path), Text),
        )
    if dialect == "clickhouse":
        return _clickhouse_json_text(target, path, json_extract)
    raise InvalidQuery("paths", f"path conditions are not supported on {dialect}")


def _clickhouse_json_text(
    target: ColumnElement, path: Sequence[str], json_extract: bool
) -> ColumnElement:
    """Strings unquoted, numbers and booleans as the stored JSON writes them, NULL for a
    missing key or a JSON null: the text the other dialects give.

    ``visitParamExtract*`` (all that ClickHouse had before 19.x) looks a key up at any
    depth and takes its first occurrence: ``properties.id`` of
    ``{"items": [{"id": 1}], "id": 2}`` is 1 there. Nested segments are a chain of
    ``visitParamExtractRaw``, each searching the object text the previous one returned.
    """
    segments = [literal(segment) for segment in path]
    if json_extract:
        kind = func.JSONType(target, *segments)
        return case(
            (kind == literal("String"), func.JSONExtractString(target, *segments)),
            (kind == literal("Null"), null()),
            else_=func.JSONExtractRaw(target, *segments),
        )
    parent = target
    for segment in segments[:-1]:
        parent = func.visitParamExtractRaw(parent, segment)
    raw = func.visitParamExtractRaw(parent, segments[-1])
    string = func.visitParamExtractString(parent, segments[-1])
    return case(
        (func.substring(raw, 1, 1) == literal('"'), string),
        (raw == literal("null"), null()),
        # Empty: a missing key, or a string whose raw extraction failed (18.x finds no
        # end to ``"\\"``, a string ending in a backslash) but which unescapes fine.
        (raw == literal(""), func.nullIf(string, literal(""))),
        else_=raw,
    )


class _ClickHouseFlavour(msgspec.Struct, frozen=True):
    """What the query layer adapts to on one ClickHouse database."""

    #: ``events.timestamp`` is ``DateTime64(3)`` (else ``DateTime``: whole seconds).
    datetime64: bool
    #: The server has ``JSONExtract*`` (19.x on), else only ``visitParamExtract*``.
    json_extract: bool


CLICKHOUSE_TIME_TYPE_SQL = (
    "SELECT type FROM system.columns WHERE database = currentDatabase() "
    "AND table = 'events' AND name = 'timestamp'"
)
CLICKHOUSE_JSON_EXTRACT_SQL = "SELECT count() FROM system.functions WHERE name = 'JSONExtractRaw'"

#: Text columns ClickHouse stores as ``''`` when absent (``String``, not ``Nullable``).
_CLICKHOUSE_OPTIONAL_TEXT = (
    "event",
    "name",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "session_id",
)


@functools.cache
def _clickhouse_select() -> type:
    """clickhouse-sqlalchemy's ``Select`` (it has ``.final()``), imported on first use.
    Its compiled form is not cached: its cache key would leave ``FINAL`` out."""
    from clickhouse_sqlalchemy.sql.selectable import Select

    return type("ClickHouseSelect", (Select,), {"inherit_cache": False})


def _clickhouse_event(event: dict[str, Any]) -> dict[str, Any]:
    for column in _CLICKHOUSE_OPTIONAL_TEXT:
        if event[column] == "":
            event[column] = None
    return event


#: The ``events`` sorting key on ClickHouse (sinks/clickhouse.py): a tuple of it names a
#: row and lets the server skip every granule that cannot hold it.
def _clickhouse_sort_key() -> list[ColumnElement]:
    c = events.c
    return [func.toDate(c.timestamp), c.source, c.type, c.event, c.message_id]


def _clickhouse_latest(columns: Sequence[ColumnElement], where: list[ColumnElement]) -> Any:
    """``SELECT columns FROM events WHERE where``, one row per sorting key: the copy
    received last, as ``FINAL`` would keep it (``ReplacingMergeTree(received_at)``).

    ``FINAL`` merges every row the filters leave, single-threaded on 18.16, whatever the
    ``LIMIT``: it cost the explorer's page ~100 ms of its ~210 ms on 1M events.
    ``ORDER BY received_at DESC LIMIT 1 BY (sorting key)`` keeps the same copy of each
    event (bench/README.md, "Dashboard queries"). The filters are applied to every copy
    before that; copies of one event differ only in their times, so the one difference
    from ``FINAL`` is at the edge of a time filter: an event whose copies straddle it is
    shown (with its latest copy) when any copy is inside.
    """
    key = _clickhouse_sort_key()
    # 18.16 fails such a subquery without WHERE here ("Column 'toDate(timestamp)' already
    # exists"): an unfiltered page gets a condition that always holds.
    where = where or [literal_column("1") == literal_column("1")]
    return (
        _clickhouse_select()(*columns)
        .select_from(events)
        .where(*where)
        .order_by(events.c.received_at.desc())
        .limit_by(key, 1)
    )


def _clickhouse_page_rows(where: list[ColumnElement], count: int) -> Any:
    """The first ``count`` events matching ``where``, newest first, in two steps: the
    page's keys, from the key columns and those the filters need; then every column of
    those events alone (the whole rows of all matches would be ~250 MB on 1M events)."""
    key = _clickhouse_sort_key()
    copies = _clickhouse_latest(
        [k.label(f"k{i}") for i, k in enumerate(key)] + [events.c.timestamp.label("t")], where
    ).subquery("copies")
    message_id, source = copies.c[f"k{len(key) - 1}"], copies.c["k1"]
    page_keys = (
        select(*(copies.c[f"k{i}"] for i in range(len(key))))
        .order_by(copies.c.t.desc(), message_id.desc(), source.desc())
        .limit(count)
    )
    # By key alone: the keys met the filters; each event's latest copy is what is shown.
    rows = _clickhouse_latest([events], [tuple_(*key).in_(page_keys)]).subquery("page")
    return select(rows).order_by(
        rows.c.timestamp.desc(), rows.c.message_id.desc(), rows.c.source.desc()
    )


#: How far back from a page's newest possible event each ClickHouse page query looks
#: before it looks further (:meth:`EventStore.query`); the last window is unbounded.
CLICKHOUSE_PAGE_WINDOWS = (timedelta(days=1), timedelta(days=7), timedelta(days=35))


class EventStore:
    """Reads stored events. Blocking: call it from a thread in async code."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._flavour: _ClickHouseFlavour | None = None

    @classmethod
    def from_url(cls, url: str) -> EventStore:
        # No JIT on PostgreSQL: compiling a dashboard query whose cost estimate passes
        # jit_above_cost adds 60-75 ms to a query of ~250 (bench/README.md, "Dashboard
        # queries"); the store's reads are short, and JIT never pays for itself here.
        return cls(make_engine(url, postgres_settings={"jit": "off"}))

    def close(self) -> None:
        self.engine.dispose()

    def ensure_schema(self) -> None:
        """Create the ``events`` table if it is missing (SQLite only: a queued edge may
        serve queries before any worker created it; server stores are migrated)."""
        if self.engine.dialect.name != "sqlite":
            return
        # Several processes start at once on one new file. "already exists": another
        # created it meanwhile. "locked": SQLite refuses, without waiting, to upgrade a
        # read (create_all's table check) to a write while another process writes.
        for attempt in range(50):
            try:
                metadata.create_all(self.engine, tables=[events])
                return
            except sqlalchemy.exc.OperationalError as exc:
                if "already exists" in str(exc):
                    return
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.02 * (1 + attempt % 5))

    def conditions(self, where: EventFilter) -> list[ColumnElement]:
        """``where`` as SQL conditions, every value a bound parameter.

        :raises InvalidQuery: too many path conditions, or a dialect without JSON access."""
        conditions = [
            self._equals(events.c[name], value)
            for name in FILTER_COLUMNS
            if (value := getattr(where, name)) is not None
        ]
        if len(where.paths) > MAX_PATH_CONDITIONS:
            raise InvalidQuery("paths", f"at most {MAX_PATH_CONDITIONS} path conditions")
        conditions += [
            self._equals(self._json_text(c.column, c.path), c.value) for c in where.paths
        ]
        if where.since is not None:
            conditions.append(events.c.timestamp >= self._time(where.since))
        if where.until is not None:
            conditions.append(events.c.timestamp < self._time(where.until))
        return conditions

    def _equals(self, expression: ColumnElement, value: str) -> ColumnElement:
        """``expression = value``, bound. PostgreSQL text cannot hold a NUL character, so
        no stored value has one, and the driver refuses to send one (a 500 for a query
        string with ``%00``): there, such a value is a condition nothing meets."""
        if "\x00" in value and self.engine.dialect.name == "postgresql":
            return false()
        return expression == value

    def query(
        self, where: EventFilter, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidQuery("limit", f"must be between 1 and {MAX_LIMIT}")
        clickhouse = self.engine.dialect.name == "clickhouse"
        # ClickHouse: each time window adds its own lower bound, ``since`` included (18.16
        # reads twice as long with two lower bounds on ``timestamp``).
        conditions = self.conditions(
            msgspec.structs.replace(where, since=None) if clickhouse else where
        )
        moment = None
        if cursor:
            moment, message_id, source = decode_cursor(cursor)
            conditions.append(self._after(moment, message_id, source))
        c = events.c
        newest_first = (c.timestamp.desc(), c.message_id.desc(), c.source.desc())
        if clickhouse:
            anchor = moment or where.until or datetime.now(UTC)  # no page event is newer
            rows = self._clickhouse_page(conditions, limit + 1, where.since, anchor)
        else:
            statement = self._select().where(*conditions).order_by(*newest_first)
            with self.engine.connect() as connection:
                rows = connection.execute(statement.limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = encode_cursor(last.timestamp, last.message_id, last.source)
        return Page(events=[self._event(row) for row in rows], next_cursor=next_cursor)

    def _after(self, moment: datetime, message_id: str, source: str | None) -> ColumnElement:
        """Rows after ``(moment, message_id, source)`` in newest-first order (a cursor
        without a source, from an earlier release: after every row of that id)."""
        c = events.c
        timestamp = self._time(moment)
        same_id = c.message_id < message_id
        if source is not None:
            same_id = or_(same_id, and_(c.message_id == message_id, c.source < source))
        return or_(c.timestamp < timestamp, and_(c.timestamp == timestamp, same_id))

    def _clickhouse_page(
        self,
        conditions: list[ColumnElement],
        count: int,
        since: datetime | None,
        anchor: datetime,
    ) -> list[Any]:
        """The first ``count`` rows matching ``conditions`` and ``timestamp >= since``,
        newest first, read window by window.

        ClickHouse (18.x and 19.x at least) cannot stop reading at ``LIMIT`` in sort
        order: it reads every row the filters leave, however old, then sorts. So the
        page is looked for in the last day before ``anchor`` (the cursor's time, the
        range's end or now; with no end, later events count in the first window), then
        the week, then five weeks, then all that is left, each window a query of its
        own that skips what the sorting key's day rules out. A page that fills in the
        first window (any busy filter) reads a day of data, not the whole range; a sparse
        filter costs a few more queries. The windows are disjoint and taken newest
        first, so the rows come out in the same order as from one query.
        """
        column = events.c.timestamp
        rows: list[Any] = []
        newer: datetime | None = None  # the previous window's lower bound
        with self.engine.connect() as connection:
            for width in (*CLICKHOUSE_PAGE_WINDOWS, None):
                lower = None if width is None else anchor - width
                last = lower is None or (since is not None and lower <= since)
                if last:
                    lower = since  # the range's own start bounds the last window
                window = list(conditions)
                if lower is not None:
                    window.append(column >= self._time(lower))
                if newer is not None:
                    window.append(column < self._time(newer))
                statement = _clickhouse_page_rows(window, count - len(rows))
                rows += connection.execute(statement).all()
                if len(rows) >= count or last:
                    return rows
                newer = lower
        return rows

    def get(self, message_id: str, source: str | None = None) -> dict[str, Any] | None:
        """The event of ``message_id`` from ``source``; None if there is none.

        Without ``source``: the event if exactly one source has that id.

        :raises AmbiguousEvent: no ``source`` given, and several sources have the id."""
        c = events.c
        same_id = self._equals(c.message_id, message_id)
        with self.engine.connect() as connection:
            if source is None:
                # By source, not by row: one source may hold several copies of an event
                # (redeliveries an SQLite store without the unique index keeps, say).
                sources = connection.execute(
                    self._select(c.source).where(same_id).distinct().limit(AMBIGUITY_SOURCES)
                ).scalars()
                sources = list(sources)
                if len(sources) > 1:
                    raise AmbiguousEvent(message_id, sources)
                if not sources:
                    return None
                source = sources[0]
            # The copy received last, where there are several.
            statement = (
                self._select()
                .where(same_id, self._equals(c.source, source))
                .order_by(c.received_at.desc())
                .limit(1)
            )
            row = connection.execute(statement).first()
        return self._event(row) if row is not None else None

    # -- aggregates (the dashboard's charts) ----------------------------------------------
    def dimension(self, name: str) -> ColumnElement:
        """What events can be counted by: a filter column (``event``, ``source``, ...) or
        a JSON path (``properties.plan``), as an SQL expression.

        :raises InvalidQuery: anything else."""
        if name in FILTER_COLUMNS:
            return events.c[name]
        condition = PathCondition.parse(name, "")
        return self._json_text(condition.column, condition.path)

    def count_by_time(self, where: EventFilter, step: int) -> list[tuple[datetime, int]]:
        """Events matching ``where`` per ``step`` seconds of ``timestamp``, oldest first;
        buckets start at multiples of ``step`` since the epoch and empty ones are left out."""
        step = int(step)
        if step < 1:
            raise InvalidQuery("step", "must be at least one second")
        epoch = self._epoch()
        # The step is an int written into the SQL, not a parameter: PostgreSQL matches a
        # GROUP BY expression to the selected one only when their texts are identical.
        bucket = (epoch - epoch % literal_column(str(step))).label("bucket")
        statement = (
            self._select(bucket, func.count().label("n"))
            .where(*self.conditions(where))
            .group_by(bucket)
            .order_by(bucket)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [(datetime.fromtimestamp(int(start), UTC), int(n)) for start, n in rows]

    def top(self, where: EventFilter, dimension: str, limit: int = 10) -> list[tuple[Any, int]]:
        """The ``limit`` most frequent values of ``dimension`` among events matching
        ``where``, with their counts, most frequent first (``None``: no value)."""
        value = self.dimension(dimension).label("value")
        count = func.count().label("n")
        statement = (
            self._select(value, count)
            .where(*self.conditions(where))
            .group_by(value)
            .order_by(count.desc(), value)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        dialect = self.engine.dialect.name
        return [(None if dialect == "clickhouse" and v == "" else v, int(n)) for v, n in rows]

    def count(self, where: EventFilter) -> int:
        statement = self._select(func.count().label("n")).where(*self.conditions(where))
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar() or 0)

    def time_span(self, where: EventFilter) -> tuple[datetime, datetime] | None:
        """The oldest and newest ``timestamp`` among events matching ``where``."""
        statement = self._select(
            func.min(events.c.timestamp).label("oldest"),
            func.max(events.c.timestamp).label("newest"),
            func.count().label("n"),
        ).where(*self.conditions(where))
        with self.engine.connect() as connection:
            oldest, newest, n = connection.execute(statement).one()
        if not n:
            return None
        return _aware(oldest), _aware(newest)

    def event_names(self, since: datetime | None = None, limit: int = 500) -> list[str]:
        """Distinct ``event`` names of track calls, most frequent first."""
        return [
            name
            for name, _ in self.top(EventFilter(type="track", since=since), "event", limit)
            if name
        ]

    def identify_traits(self, user_id: str, limit: int = 1000) -> dict[str, Any]:
        """A user's traits: the ``traits`` of their identify calls merged oldest first,
        as every store has them (PostgreSQL's ``users`` table is one store's copy)."""
        statement = (
            self._select(events.c.traits)
            .where(self._equals(events.c.user_id, user_id), events.c.type == "identify")
            .order_by(events.c.timestamp.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        traits: dict[str, Any] = {}
        for (value,) in reversed(rows):
            if isinstance(value, dict):
                traits.update(value)
        return traits

    def size(self) -> StoreSize:
        """How many events the store holds and, where the database tells, its bytes."""
        dialect = self.engine.dialect.name
        with self.engine.connect() as connection:
            rows = connection.execute(self._select(func.count())).scalar() or 0
            if dialect == "postgresql":
                nbytes = connection.execute(text(_POSTGRES_SIZE_SQL)).scalar()
            elif dialect == "clickhouse":
                nbytes = connection.execute(text(_CLICKHOUSE_SIZE_SQL)).scalar()
            elif dialect == "sqlite":
                page_count = connection.exec_driver_sql("PRAGMA page_count").scalar()
                page_size = connection.exec_driver_sql("PRAGMA page_size").scalar()
                nbytes = page_count * page_size
            else:
                nbytes = None
        return StoreSize(dialect=dialect, events=int(rows), bytes=_int_or_none(nbytes))

    # -- the live tail (stores written at the edge: no broker to tap) ----------------------
    def tail_position(self) -> TailPosition:
        """Where a tail starts: after everything stored now."""
        with self.engine.connect() as connection:
            if self.engine.dialect.name == "sqlite":
                rowid = connection.exec_driver_sql("SELECT max(rowid) FROM events").scalar()
                return TailPosition(rowid=rowid or 0)
        return TailPosition(received_at=datetime.now(UTC))

    def stored_since(self, position: TailPosition, limit: int = 1000) -> list[dict[str, Any]]:
        """Events stored after ``position``, oldest first; ``position`` moves past them.

        SQLite reads by ``rowid``, which grows with every insert: an index lookup however
        large the table. Other stores read by ``received_at`` (no index of its own), within
        the last day of ``timestamp`` so that the time-ordered key bounds the scan, and
        look :data:`TAIL_LOOKBACK` back for rows committed late, remembering which ids
        they have shown."""
        if self.engine.dialect.name == "sqlite":
            rowid = literal_column("rowid")
            statement = (
                select(events, rowid.label("_rowid"))
                .where(rowid > position.rowid)
                .order_by(rowid)
                .limit(limit)
            )
            with self.engine.connect() as connection:
                rows = connection.execute(statement).all()
            if rows:
                position.rowid = rows[-1]._rowid
            return [{k: v for k, v in self._event(row).items() if k != "_rowid"} for row in rows]
        now = datetime.now(UTC)
        start = position.received_at - TAIL_LOOKBACK
        statement = (
            self._select()
            .where(
                events.c.received_at >= self._time(start),
                events.c.timestamp >= self._time(now - timedelta(days=1)),
            )
            .order_by(events.c.received_at)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        fresh = []
        for row in rows:
            key = (row.source, row.message_id)
            if key in position.seen:
                continue
            position.seen[key] = _aware(row.received_at)
            fresh.append(self._event(row))
        if rows:
            position.received_at = max(position.received_at, _aware(rows[-1].received_at))
        horizon = position.received_at - 2 * TAIL_LOOKBACK
        position.seen = {k: t for k, t in position.seen.items() if t >= horizon}
        return fresh

    # -- dialect differences -------------------------------------------------------------
    def _select(self, *columns: Any) -> Any:
        """``SELECT`` ``columns`` (default: every column) ``FROM events``; on ClickHouse
        ``FROM events FINAL``: copies of a redelivered event that no merge has collapsed
        yet are read (and counted) as one."""
        if self.engine.dialect.name != "clickhouse":
            return select(*columns).select_from(events) if columns else select(events)
        if columns:
            return _clickhouse_select()(*columns).select_from(events).final()
        return _clickhouse_select()(events).final()

    def _json_text(self, column: str, path: Sequence[str]) -> ColumnElement:
        dialect = self.engine.dialect.name
        flavour = self._clickhouse() if dialect == "clickhouse" else None
        json_extract = flavour.json_extract if flavour else True
        return json_text(dialect, column, path, json_extract=json_extract)

    def _epoch(self) -> ColumnElement:
        """``timestamp`` as whole seconds since the epoch (UTC), per dialect."""
        dialect = self.engine.dialect.name
        column = events.c.timestamp
        if dialect == "postgresql":
            return cast(func.floor(func.extract("epoch", column)), BigInteger)
        if dialect == "clickhouse":
            return func.toUInt32(func.toDateTime(column))
        if dialect == "sqlite":
            return cast(func.strftime("%s", column), Integer)
        raise InvalidQuery("step", f"time buckets are not supported on {dialect}")

    def _event(self, row: Any) -> dict[str, Any]:
        event = row_to_event(row)
        return _clickhouse_event(event) if self.engine.dialect.name == "clickhouse" else event

    def _time(self, value: datetime) -> Any:
        """A time to compare ``timestamp`` with. ClickHouse gets it converted to the
        column's type: compared with a string, 18.16 fails on a key holding
        ``toDate(timestamp)``, and clickhouse-driver drops the milliseconds of a
        ``datetime`` parameter."""
        value = _naive_utc(value)
        if self.engine.dialect.name != "clickhouse":
            return value
        if self._clickhouse().datetime64:
            moment = literal(value.isoformat(sep=" ", timespec="milliseconds"))
            return func.toDateTime64(moment, 3, "UTC")
        return func.toDateTime(literal(value.isoformat(sep=" ", timespec="seconds")), "UTC")

    def _clickhouse(self) -> _ClickHouseFlavour:
        """Probed once the ``events`` table exists (until then, every query fails)."""
        if self._flavour is not None:
            return self._flavour
        with self.engine.connect() as connection:
            column = connection.execute(text(CLICKHOUSE_TIME_TYPE_SQL)).scalar()
            functions = connection.execute(text(CLICKHOUSE_JSON_EXTRACT_SQL)).scalar()
        flavour = _ClickHouseFlavour(
            datetime64=bool(column and column.startswith("DateTime64")),
            json_extract=bool(functions),
        )
        if column is not None:
            self._flavour = flavour
        return flavour
