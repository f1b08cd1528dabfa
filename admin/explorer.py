"""What the dashboard's filter form means: URL query parameters ↔ a store filter.

The explorer's URL uses the query API's parameter names (``event``, ``user_id``,
``since``, ``properties.plan``, ...), so a filtered view can be bookmarked, shared and
replayed against ``GET /api/v1/events``. The dashboard adds three of its own:

``range``
    ``15m``, ``1h``, ``24h`` (default), ``7d``, ``30d``: the last so long, counted from
    each request (a bookmark stays "the last hour"); ``all``: no time bound;
    ``custom``: ``since`` and ``until`` as given (ISO 8601, UTC when no offset).
``where``
    The form's property-condition rows, each ``PATH = VALUE`` (``properties.plan = pro``);
    they become ``properties.plan=pro`` in the canonical URL.
``breakdown``
    A column or JSON path to break the matching events down by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from eventrouter.edge.query_api import filter_from_params
from eventrouter.errors import APIError
from eventrouter.store.query import FILTER_COLUMNS, PATH_COLUMNS, EventFilter, PathCondition

RANGES: dict[str, timedelta | None] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
    "custom": None,
}
RANGE_LABELS = {
    "15m": "Last 15 minutes",
    "1h": "Last hour",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "all": "All time",
    "custom": "Custom range",
}
DEFAULT_RANGE = "24h"
PAGE_SIZE = 50
#: The stored columns a page's rows show (``_event_row.html``): an opened row fetches
#: the whole event (``/admin/event``), so a page reads no JSON column (on ClickHouse,
#: the busiest user's page read 210 ms of ``context`` and ``properties``, 40 without).
ROW_COLUMNS = (
    "message_id",
    "source",
    "timestamp",
    "type",
    "event",
    "name",
    "group_id",
    "previous_id",
    "user_id",
    "anonymous_id",
)
#: Bucket widths the chart chooses from, in seconds: the smallest that gives at most
#: :data:`MAX_BUCKETS` bars over the range.
STEPS = (
    10,
    30,
    60,
    300,
    600,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    7 * 86400,
    30 * 86400,
)
MAX_BUCKETS = 60
_DASHBOARD_PARAMS = ("range", "where", "breakdown")
FILTER_FIELDS = FILTER_COLUMNS
TYPES = ("track", "identify", "page", "screen", "group", "alias")


@dataclass
class ExplorerQuery:
    """One request's filters, as the store reads them and as the form shows them."""

    where: EventFilter
    range: str
    cursor: str | None = None
    limit: int = PAGE_SIZE
    breakdown: str | None = None
    #: The custom range as typed (shown back in the form).
    since_text: str = ""
    until_text: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def conditions(self) -> list[PathCondition]:
        return self.where.paths

    def params(self, *, cursor: bool = False, breakdown: bool = True) -> list[tuple[str, str]]:
        """The canonical query parameters (API names), in a stable order."""
        pairs: list[tuple[str, str]] = []
        if self.range != DEFAULT_RANGE:
            pairs.append(("range", self.range))
        if self.range == "custom":
            pairs += [
                (k, v) for k, v in (("since", self.since_text), ("until", self.until_text)) if v
            ]
        pairs += [(name, value) for name, value in self.fields.items() if value]
        pairs += [(".".join((c.column, *c.path)), c.value) for c in self.conditions]
        if breakdown and self.breakdown:
            pairs.append(("breakdown", self.breakdown))
        if cursor and self.cursor:
            pairs.append(("cursor", self.cursor))
        return pairs

    def query_string(self, **kwargs: Any) -> str:
        return urlencode(self.params(**kwargs))

    def with_filter(self, name: str, value: Any) -> str:
        """This query narrowed to ``name`` = ``value`` (a filter column or JSON path),
        first page: the link behind a breakdown row."""
        pairs = [(k, v) for k, v in self.params(breakdown=True) if k != name]
        return urlencode([*pairs, (name, "" if value is None else str(value))])

    def with_cursor(self, cursor: str | None) -> str:
        pairs = self.params()
        if cursor:
            pairs.append(("cursor", cursor))
        return urlencode(pairs)


def parse(params: Mapping[str, Any], now: datetime | None = None) -> ExplorerQuery:
    """The dashboard's query parameters → an :class:`ExplorerQuery`.

    :raises APIError: 400 naming the parameter that is wrong."""
    now = now or datetime.now(UTC)
    api_params = {k: v for k, v in params.items() if k not in _DASHBOARD_PARAMS}
    api_params.pop("limit", None)
    for row in _as_list(params.get("where")):
        name, value = _condition_row(row)
        if name is None:
            continue
        if name in api_params:
            raise APIError(400, "invalid_param", f"{name}: given more than once")
        api_params[name] = value
    range_ = params.get("range") or None
    if isinstance(range_, list):
        raise APIError(400, "invalid_param", "range: given more than once")
    if range_ is None:
        has_time = any(api_params.get(k) for k in ("since", "until"))
        range_ = "custom" if has_time else DEFAULT_RANGE
    if range_ not in RANGES:
        raise APIError(400, "invalid_param", f"range: {range_!r} is not one of {', '.join(RANGES)}")
    if range_ != "custom":  # the form still sends the custom fields: ignore them
        api_params.pop("since", None)
        api_params.pop("until", None)
    where, _, cursor = filter_from_params(api_params)
    if range_ == "custom" and where.since and where.until and where.since >= where.until:
        raise APIError(400, "invalid_param", "until: must be later than since")
    if span := RANGES[range_]:
        where.since = now - span
    breakdown = params.get("breakdown") or None
    if isinstance(breakdown, list):
        raise APIError(400, "invalid_param", "breakdown: given more than once")
    if breakdown is not None:
        _check_dimension(breakdown)
    return ExplorerQuery(
        where=where,
        range=range_,
        cursor=cursor,
        breakdown=breakdown,
        since_text=str(api_params.get("since") or ""),
        until_text=str(api_params.get("until") or ""),
        fields={name: getattr(where, name) or "" for name in FILTER_FIELDS},
    )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _condition_row(row: str) -> tuple[str | None, str]:
    """``properties.plan = pro`` → (``properties.plan``, ``pro``); a blank row → None."""
    if not row.strip():
        return None, ""
    name, sep, value = row.partition("=")
    name = name.strip()
    if not sep or not name:
        raise APIError(
            400, "invalid_param", f"where: {row!r} is not PATH = VALUE (properties.plan = pro)"
        )
    if name.partition(".")[0] not in PATH_COLUMNS:
        raise APIError(
            400,
            "invalid_param",
            f"where: {name!r} must start with properties., traits. or context.",
        )
    return name, value.strip()


def _check_dimension(name: str) -> None:
    if name in FILTER_FIELDS:
        return
    try:
        PathCondition.parse(name, "")
    except ValueError as exc:
        raise APIError(400, "invalid_param", f"breakdown: {exc}") from None


def choose_step(since: datetime, until: datetime) -> int:
    """The bucket width, in seconds, for a chart from ``since`` to ``until``."""
    span = max(int((until - since).total_seconds()), 1)  # whole seconds: 1h is 60 bars
    return next((step for step in STEPS if span / step <= MAX_BUCKETS), STEPS[-1])


def fill_buckets(
    counts: list[tuple[datetime, int]], since: datetime, until: datetime, step: int
) -> list[tuple[datetime, int]]:
    """Every bucket from the one holding ``since`` to the one holding ``until``, with
    zero for the empty ones (the store returns only buckets that have events)."""
    by_start = {int(start.timestamp()): n for start, n in counts}
    first = int(since.timestamp()) // step * step
    last = int(until.timestamp()) // step * step
    if (last - first) // step > 10 * MAX_BUCKETS:  # a corrupt span: never draw millions
        first = last - 10 * MAX_BUCKETS * step
    return [
        (datetime.fromtimestamp(t, UTC), by_start.get(t, 0)) for t in range(first, last + 1, step)
    ]


def step_label(step: int) -> str:
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if step % seconds == 0:
            n = step // seconds
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{step} seconds"
