"""``/admin/active-users``: distinct users per day, week or month (DAU, WAU, MAU),
optionally of one event, optionally broken down by a dimension.

The URL holds the whole state, so a view can be bookmarked and shared::

    /admin/active-users?range=30d&interval=day|week|month&event=NAME&by=DIMENSION

``range`` takes the explorer's values (:data:`eventrouter.admin.explorer.RANGES`);
``by`` a filter column (``event``, ``source``, ...) or a JSON path
(``properties.plan``). Like the explorer, a plain request gets the page and an htmx one
(the form's) just the results, with the URL pushed. The numbers come from
:meth:`eventrouter.store.query.EventStore.active_users`; the page says whether the store
counts them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import falcon
import falcon.asgi

from eventrouter.admin import explorer
from eventrouter.admin.charts import line_geometry
from eventrouter.admin.views import _is_htmx, _one_param, _View
from eventrouter.errors import APIError
from eventrouter.store.query import INTERVALS, EventFilter
from eventrouter.store.rollup import period_start

PATH = "/admin/active-users"
DEFAULT_RANGE = "30d"
DEFAULT_INTERVAL = "day"
#: Values shown in the breakdown table.
TOP_VALUES = 10
INTERVAL_LABELS = {"day": "Daily", "week": "Weekly", "month": "Monthly"}
#: Seconds of one step, for the x axis's labels (months and weeks labelled by date).
_STEP = {"day": 86400, "week": 7 * 86400, "month": 30 * 86400}


@dataclass
class ActiveUsersQuery:
    """One request's parameters, checked."""

    range: str
    interval: str
    event: str | None
    by: str | None
    where: EventFilter

    def query_string(self) -> str:
        pairs = [("range", self.range), ("interval", self.interval)]
        pairs += [(k, v) for k, v in (("event", self.event), ("by", self.by)) if v]
        return urlencode(pairs)

    def events_link(self, value: object) -> str:
        """The explorer's query string narrowed to one value of ``by`` (and the event)."""
        pairs = {"range": self.range}
        if self.event:
            pairs["event"] = self.event
        pairs[self.by or "event"] = str(value)
        return urlencode(pairs)


def parse(req: falcon.asgi.Request, now: datetime | None = None) -> ActiveUsersQuery:
    """:raises APIError: 400 naming the parameter that is wrong."""
    range_ = _one_param(req, "range") or DEFAULT_RANGE
    if range_ not in explorer.RANGES or range_ == "custom":
        choices = ", ".join(r for r in explorer.RANGES if r != "custom")
        raise APIError(400, "invalid_param", f"range: {range_!r} is not one of {choices}")
    interval = _one_param(req, "interval") or DEFAULT_INTERVAL
    if interval not in INTERVALS:
        raise APIError(
            400, "invalid_param", f"interval: {interval!r} is not one of {', '.join(INTERVALS)}"
        )
    event = _one_param(req, "event")
    by = _one_param(req, "by")
    if by is not None:
        try:
            explorer._check_dimension(by)
        except APIError:
            raise APIError(
                400,
                "invalid_param",
                f"by: {by!r} is neither a column ({', '.join(explorer.FILTER_FIELDS)}) nor "
                "properties.KEY, traits.KEY or context.KEY",
            ) from None
    span = explorer.RANGES[range_]
    since = (now or datetime.now(UTC)) - span if span else None
    where = EventFilter(event=event, since=since)
    return ActiveUsersQuery(range_, interval, event, by, where)


class ActiveUsersView(_View):
    """The page, or (htmx) its results."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        htmx = _is_htmx(req)
        query = None
        try:
            query = parse(req)
            store = self.d.store_or_error()
            result = await self.d.read(
                store.active_users, query.where, query.interval, query.by, TOP_VALUES
            )
        except APIError as exc:
            if htmx:
                self.error(req, resp, exc, session)
            else:
                self._page(req, resp, session, query, None, exc)
            return
        if htmx:
            self.d.render(req, resp, "_active_users.html", **self._context(query, result))
            resp.set_header("HX-Push-Url", f"{PATH}?{query.query_string()}")
            return
        self._page(req, resp, session, query, result, None)

    def _context(self, query: ActiveUsersQuery, result) -> dict:
        return {
            "q": query,
            "result": result,
            "chart": line_geometry(
                fill_periods(result.series, query.where.since, datetime.now(UTC), query.interval),
                _STEP[query.interval],
                y_title="users",
            ),
            "label": INTERVAL_LABELS[query.interval],
            "most": max((n for _, n in result.top), default=0),
        }

    def _page(self, req, resp, session, query, result, error: APIError | None) -> None:
        form = {
            "range": _one_value(req, "range") or DEFAULT_RANGE,
            "interval": _one_value(req, "interval") or DEFAULT_INTERVAL,
            "event": _one_value(req, "event") or "",
            "by": _one_value(req, "by") or "",
        }
        context = self._context(query, result) if result is not None else {}
        self.d.render(
            req,
            resp,
            "active_users.html",
            status=error.status if error else 200,
            error=error.body() if error else None,
            form=form,
            ranges={k: v for k, v in explorer.RANGE_LABELS.items() if k != "custom"},
            intervals=INTERVAL_LABELS,
            session=session,
            **context,
        )


def next_period(start: datetime, interval: str) -> datetime:
    """The start of the day, week or month after the one starting at ``start``."""
    if interval == "month":
        return (start + timedelta(days=32)).replace(day=1)
    return start + timedelta(days=7 if interval == "week" else 1)


def fill_periods(
    series: list[tuple[datetime, int]], since: datetime | None, until: datetime, interval: str
) -> list[tuple[datetime, int]]:
    """Every period from the one holding ``since`` (else the first with users) to the one
    holding ``until``, with 0 for those without users: the store returns only periods
    that have some, and a line drawn through the others would hide the gaps."""
    if since is None and not series:
        return []
    counts = {start: n for start, n in series}
    period = period_start(since if since is not None else series[0][0], interval)
    last = period_start(until, interval)
    if series and series[-1][0] > last:  # a clock behind the store's: keep every point
        last = series[-1][0]
    filled = []
    while period <= last and len(filled) <= 10 * 366:  # a corrupt span never draws millions
        filled.append((period, counts.get(period, 0)))
        period = next_period(period, interval)
    return filled


def _one_value(req: falcon.asgi.Request, name: str) -> str | None:
    """A parameter as typed, for the form (the first, if given more than once)."""
    value = req.params.get(name)
    return value[0] if isinstance(value, list) else value
