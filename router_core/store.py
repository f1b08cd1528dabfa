"""The store query layer: one API over every SQL store (SQLite, PostgreSQL, ClickHouse:
the same SQLAlchemy Core expressions, with each dialect's own JSON access).

It serves ``GET /api/v1/events`` and the admin dashboard. Results come newest first by
``(timestamp, message_id)`` with keyset pagination: the cursor is the last row's key,
so a page costs the same however deep it is and rows arriving meanwhile never shift
it. Every filter value is a bound parameter.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy.exc
from sqlalchemy import (
    ColumnElement,
    Engine,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from router_core.db import make_engine
from router_core.schema import events, metadata

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
FILTER_COLUMNS = ("type", "event", "user_id", "anonymous_id", "session_id", "source")


class InvalidQuery(ValueError):
    """A filter value the store cannot use; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


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


class Page(msgspec.Struct):
    events: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(timestamp: datetime, message_id: str) -> str:
    raw = msgspec.json.encode([timestamp.isoformat(), message_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        timestamp, message_id = msgspec.json.decode(raw, type=tuple[str, str])
        return datetime.fromisoformat(timestamp), message_id
    except (ValueError, msgspec.DecodeError):
        raise InvalidQuery("cursor", "not a cursor returned by this API") from None


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _iso(value: datetime | None) -> str | None:
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
        event[column] = _iso(event[column])
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
    return case(
        (
            func.substring(raw, 1, 1) == literal('"'),
            func.visitParamExtractString(parent, segments[-1]),
        ),
        (raw.in_([literal(""), literal("null")]), null()),
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


class EventStore:
    """Reads stored events. Blocking: call it from a thread in async code."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._flavour: _ClickHouseFlavour | None = None

    @classmethod
    def from_url(cls, url: str) -> EventStore:
        return cls(make_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    def ensure_schema(self) -> None:
        """Create the ``events`` table if it is missing (SQLite only: a queued edge may
        serve queries before any worker created it; server stores are migrated)."""
        if self.engine.dialect.name != "sqlite":
            return
        try:
            metadata.create_all(self.engine, tables=[events])
        except sqlalchemy.exc.OperationalError as exc:  # a worker created it meanwhile
            if "already exists" not in str(exc):
                raise

    def query(
        self, where: EventFilter, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidQuery("limit", f"must be between 1 and {MAX_LIMIT}")
        conditions = [
            events.c[name] == value
            for name in FILTER_COLUMNS
            if (value := getattr(where, name)) is not None
        ]
        if len(where.paths) > MAX_PATH_CONDITIONS:
            raise InvalidQuery("paths", f"at most {MAX_PATH_CONDITIONS} path conditions")
        dialect = self.engine.dialect.name
        flavour = self._clickhouse() if dialect == "clickhouse" else None
        json_extract = flavour.json_extract if flavour else True
        conditions += [
            json_text(dialect, c.column, c.path, json_extract=json_extract) == c.value
            for c in where.paths
        ]
        if where.since is not None:
            conditions.append(events.c.timestamp >= self._time(where.since))
        if where.until is not None:
            conditions.append(events.c.timestamp < self._time(where.until))
        if cursor:
            timestamp, message_id = decode_cursor(cursor)
            timestamp = self._time(timestamp)
            conditions.append(
                or_(
                    events.c.timestamp < timestamp,
                    and_(events.c.timestamp == timestamp, events.c.message_id < message_id),
                )
            )
        statement = (
            self._select()
            .where(*conditions)
            .order_by(events.c.timestamp.desc(), events.c.message_id.desc())
            .limit(limit + 1)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = encode_cursor(last.timestamp, last.message_id)
        return Page(events=[self._event(row) for row in rows], next_cursor=next_cursor)

    def get(self, message_id: str) -> dict[str, Any] | None:
        statement = self._select().where(events.c.message_id == message_id)
        if self.engine.dialect.name == "clickhouse":
            statement = statement.limit(1)
        with self.engine.connect() as connection:
            row = connection.execute(statement).first()
        return self._event(row) if row is not None else None

    # -- dialect differences -------------------------------------------------------------
    def _select(self) -> Any:
        """``SELECT`` every column; on ClickHouse ``FROM events FINAL``: copies of a
        redelivered event that no merge has collapsed yet are read as one."""
        if self.engine.dialect.name != "clickhouse":
            return select(events)
        return _clickhouse_select()(events).final()

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
