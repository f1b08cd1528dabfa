"""``/admin/funnels`` and ``/admin/retention``: the query parameters, the views and the
funnel chart's geometry. The numbers come from :mod:`eventrouter.store.analysis`.

Both keep their whole state in the URL, as the explorer does (a plain request answers
the page, an htmx one the result fragment and ``HX-Push-Url``):

``/admin/funnels?range=30d&step=A&step=B[&step=...]&whereN=properties.KEY%3Dvalue&window=1d&by=properties.plan``
    2 to 5 ``step`` event names in order; ``whereN`` (repeatable) a condition on the
    N-th ``step`` given; ``window`` seconds or ``30m``/``1h``/``1d``/``7d``; ``by`` a
    column or JSON path of the entry event.
``/admin/retention?range=30d&first=A&returning=B&period=day|week``

``range`` takes the explorer's values (``custom`` with ``since`` and ``until``). A
blank ``step`` (the form's unused rows) is no step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import falcon.asgi

from eventrouter.admin import explorer
from eventrouter.admin.views import _is_htmx, _View
from eventrouter.errors import APIError
from eventrouter.store import analysis
from eventrouter.store.query import InvalidQuery, PathCondition

DEFAULT_RANGE = "30d"
DEFAULT_WINDOW = "1d"
#: What a step's or a breakdown's label shows of a long value (the whole is its title).
LABEL_CHARS = 28


def _one(params: Mapping[str, Any], name: str, *, strip: bool = True) -> str:
    """A parameter given at most once ('' when absent). Event names are kept as they
    are (``strip=False``): an event may be named with spaces around it."""
    value = params.get(name)
    if isinstance(value, list):
        raise APIError(400, "invalid_param", f"{name}: given more than once")
    if not isinstance(value, str):
        return ""
    return value.strip() if strip else value


def _many(params: Mapping[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _range(params: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The :class:`RangedQuery` fields of ``params``, read as the explorer reads them
    (``until``: now if open); the ``since``/``until`` texts kept for the URL."""
    given = {k: params[k] for k in ("range", "since", "until") if k in params}
    given.setdefault("range", DEFAULT_RANGE)
    query = explorer.parse(given, now)
    return {
        "range": query.range,
        "since": query.where.since,
        "until": query.where.until or now,
        "since_text": _one(params, "since"),
        "until_text": _one(params, "until"),
    }


@dataclass(kw_only=True)
class RangedQuery:
    """What the funnel and retention pages share: the time range, as parsed and as typed."""

    range: str
    since: datetime | None
    until: datetime
    since_text: str = ""
    until_text: str = ""

    def range_params(self) -> list[tuple[str, str]]:
        """``range`` and, for a custom range, the ``since``/``until`` given."""
        pairs = [("range", self.range)]
        if self.range == "custom":
            pairs += [
                (k, v) for k, v in (("since", self.since_text), ("until", self.until_text)) if v
            ]
        return pairs


def _bad(exc: InvalidQuery) -> APIError:
    return APIError(400, "invalid_param", str(exc))


@dataclass(kw_only=True)
class FunnelQuery(RangedQuery):
    steps: list[analysis.Step]
    window: int
    window_text: str
    by: str | None

    def params(self) -> list[tuple[str, str]]:
        """The canonical query parameters (``whereN`` numbered by the kept steps)."""
        pairs = self.range_params()
        pairs += [("step", step.event) for step in self.steps]
        for n, step in enumerate(self.steps, 1):
            pairs += [(f"where{n}", condition_text(c)) for c in step.conditions]
        pairs.append(("window", self.window_text))
        if self.by:
            pairs.append(("by", self.by))
        return pairs

    def query_string(self) -> str:
        return urlencode(self.params())


def condition_text(condition: PathCondition) -> str:
    return f"{'.'.join((condition.column, *condition.path))}={condition.value}"


def parse_condition(name: str, text: str) -> PathCondition:
    """``properties.plan=pro`` (spaces around ``=`` allowed) → a condition; 400 naming
    ``name`` otherwise."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip():
        raise APIError(
            400, "invalid_param", f"{name}: {text!r} is not PATH=VALUE (properties.plan=pro)"
        )
    try:
        return PathCondition.parse(path.strip(), value.strip())
    except InvalidQuery as exc:
        raise APIError(400, "invalid_param", f"{name}: {exc}") from None


def parse_funnel(params: Mapping[str, Any], now: datetime | None = None) -> FunnelQuery:
    """The funnel page's query parameters → a :class:`FunnelQuery`.

    :raises APIError: 400 naming the parameter that is wrong."""
    now = now or datetime.now(UTC)
    span = _range(params, now)
    raw_steps = _many(params, "step")
    known = {f"where{n}" for n in range(1, len(raw_steps) + 1)}
    for name in params:
        if name.startswith("where") and name not in known:
            raise APIError(400, "invalid_param", f"{name}: there is no step {name[5:]!r}")
    steps = []
    for n, event in enumerate(raw_steps, 1):
        rows = [row for row in _many(params, f"where{n}") if row.strip()]
        if not event.strip():
            if rows:
                raise APIError(400, "invalid_param", f"where{n}: step {n} is empty")
            continue
        if len(rows) > 10:
            raise APIError(400, "invalid_param", f"where{n}: at most 10 conditions")
        conditions = tuple(parse_condition(f"where{n}", row) for row in rows)
        steps.append(analysis.Step(event, conditions))
    try:
        analysis.check_steps(steps)
        window_text = _one(params, "window") or DEFAULT_WINDOW
        window = analysis.parse_window(window_text)
    except InvalidQuery as exc:
        raise _bad(exc) from None
    by = _one(params, "by") or None
    if by is not None and by not in explorer.FILTER_FIELDS:
        try:
            PathCondition.parse(by, "")
        except InvalidQuery as exc:
            raise APIError(400, "invalid_param", f"by: {exc}") from None
    return FunnelQuery(
        **span,
        steps=steps,
        window=window,
        window_text=window_text,
        by=by,
    )


@dataclass(kw_only=True)
class RetentionQuery(RangedQuery):
    first: str
    returning: str
    period: str

    def query_string(self) -> str:
        pairs = self.range_params()
        pairs += [("first", self.first), ("returning", self.returning), ("period", self.period)]
        return urlencode(pairs)


def parse_retention(params: Mapping[str, Any], now: datetime | None = None) -> RetentionQuery:
    """The retention page's query parameters → a :class:`RetentionQuery`.

    :raises APIError: 400 naming the parameter that is wrong."""
    now = now or datetime.now(UTC)
    span = _range(params, now)
    first, returning = _one(params, "first", strip=False), _one(params, "returning", strip=False)
    for name, value in (("first", first), ("returning", returning)):
        if not value.strip():
            raise APIError(400, "invalid_param", f"{name}: required (an event name)")
    period = _one(params, "period") or "day"
    if period not in analysis.PERIODS:
        raise APIError(
            400, "invalid_param", f"period: {period!r} is not one of {', '.join(analysis.PERIODS)}"
        )
    return RetentionQuery(
        **span,
        first=first,
        returning=returning,
        period=period,
    )


# -- the funnel chart ----------------------------------------------------------------------
WIDTH, HEIGHT = 900, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 36, 56


@dataclass(frozen=True)
class FunnelBar:
    x: float
    y: float
    width: float
    height: float
    label: str
    title: str
    users: int
    percent: str


@dataclass
class FunnelChart:
    bars: list[FunnelBar]
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    baseline: float = HEIGHT - BOTTOM
    left: int = LEFT


def short(value: Any) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _nice_top(peak: int) -> int:
    """The y axis's top: the smallest 1, 2 or 5 times 10^n at or above ``peak`` (at least 1)."""
    top = 1
    while True:
        for factor in (1, 2, 5):
            if top * factor >= peak:
                return top * factor
        top *= 10


def funnel_chart(steps: list[analysis.Step], results: list[analysis.StepResult]) -> FunnelChart:
    """One bar per step from a y axis that starts at 0, ticks at fifths of its top."""
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height
    top = _nice_top(max((r.users for r in results), default=0))
    slot = plot_width / max(len(results), 1)
    bars = []
    for i, (step, result) in enumerate(zip(steps, results, strict=True)):
        height = plot_height * result.users / top
        if result.users and height < 1:
            height = 1.0
        percent = "" if result.from_first is None else f"{100 * result.from_first:.1f} %"
        bars.append(
            FunnelBar(
                x=round(LEFT + i * slot + slot * 0.15, 2),
                y=round(baseline - height, 2),
                width=round(slot * 0.7, 2),
                height=round(height, 2),
                label=f"{i + 1}. {short(step.event)}",
                title=step.event,
                users=result.users,
                percent=percent,
            )
        )
    ticks = [(round(baseline - plot_height * f / 5, 2), f"{top * f // 5:,}") for f in range(6)]
    if top < 5:  # whole users only
        ticks = [(round(baseline - plot_height * n / top, 2), str(n)) for n in range(top + 1)]
    return FunnelChart(bars=bars, y_ticks=ticks, baseline=baseline)


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def heat(count: int | None, users: int) -> str:
    """A cell's shade class, ``heat-0`` to ``heat-10`` by tenths of the cohort (a CSS
    class: the page's CSP allows no inline style)."""
    if count is None or not users:
        return "heat-none"
    return f"heat-{round(10 * count / users)}"


# -- views -----------------------------------------------------------------------------------
class _AnalysisView(_View):
    path = ""
    page_template = ""
    fragment_template = ""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        htmx = _is_htmx(req)
        query = result = error = None
        given = any(k in req.params for k in self.required)
        try:
            if given or htmx:
                query = self.parse(req.params)
                result = await self.d.read(self.compute, query)
        except APIError as exc:
            if htmx:
                self.error(req, resp, exc, session)
                return
            error = exc
        context = {"q": query, "result": result, **self.extra(query, result)}
        if htmx:
            self.d.render(req, resp, self.fragment_template, session=session, **context)
            resp.set_header("HX-Push-Url", f"{self.path}?{query.query_string()}")
            return
        self.d.render(
            req,
            resp,
            self.page_template,
            status=error.status if error else 200,
            error=error.body() if error else None,
            form=self.form(req.params, query),
            ranges=explorer.RANGE_LABELS,
            session=session,
            **context,
        )

    def compute(self, query: Any) -> Any:  # in a thread
        raise NotImplementedError

    def extra(self, query: Any, result: Any) -> dict[str, Any]:
        return {}


def _text_params(params: Mapping[str, Any], name: str) -> list[str]:
    return [v for v in _many(params, name) if isinstance(v, str)]


class FunnelsView(_AnalysisView):
    """``/admin/funnels``: conversion through 2-5 ordered steps (module docstring)."""

    path = "/admin/funnels"
    page_template = "funnels.html"
    fragment_template = "_funnel.html"
    required = ("step",)

    parse = staticmethod(parse_funnel)

    def compute(self, query: FunnelQuery) -> analysis.FunnelResult:
        store = self.d.store_or_error()
        return analysis.funnel(store, query.steps, query.window, query.since, query.until, query.by)

    def extra(self, query, result) -> dict[str, Any]:
        if result is None:
            return {}
        return {
            "chart": funnel_chart(query.steps, result.steps),
            "duration": analysis.format_duration,
            "percent": percent,
            "short": short,
        }

    def form(self, params: Mapping[str, Any], query: FunnelQuery | None) -> dict[str, Any]:
        """Five step rows (event, conditions), the window, the breakdown, the range."""
        if query is not None:
            rows = [(s.event, [condition_text(c) for c in s.conditions]) for s in query.steps]
            values = {"window": query.window_text, "by": query.by or "", "range": query.range}
            values.update(since=query.since_text, until=query.until_text)
        else:
            events = _text_params(params, "step")
            rows = [(e, _text_params(params, f"where{n}")) for n, e in enumerate(events, 1)]
            values = {k: _one_text(params, k) for k in ("window", "by", "since", "until")}
            values["range"] = _one_text(params, "range") or DEFAULT_RANGE
            values["window"] = values["window"] or DEFAULT_WINDOW
        rows = (rows + [("", [])] * analysis.MAX_STEPS)[: max(analysis.MAX_STEPS, len(rows))]
        return {**values, "steps": rows}


class RetentionView(_AnalysisView):
    """``/admin/retention``: a cohort table (module docstring)."""

    path = "/admin/retention"
    page_template = "retention.html"
    fragment_template = "_retention.html"
    required = ("first", "returning")

    parse = staticmethod(parse_retention)

    def compute(self, query: RetentionQuery) -> analysis.RetentionResult:
        store = self.d.store_or_error()
        return analysis.retention(
            store, query.first, query.returning, query.period, query.since, query.until
        )

    def extra(self, query, result) -> dict[str, Any]:
        return {"percent": percent, "heat": heat, "periods": analysis.RETENTION_PERIODS}

    def form(self, params: Mapping[str, Any], query: RetentionQuery | None) -> dict[str, Any]:
        if query is not None:
            return {
                "range": query.range,
                "since": query.since_text,
                "until": query.until_text,
                "first": query.first,
                "returning": query.returning,
                "period": query.period,
            }
        values = {k: _one_text(params, k) for k in ("first", "returning", "since", "until")}
        values["range"] = _one_text(params, "range") or DEFAULT_RANGE
        values["period"] = _one_text(params, "period") or "day"
        return values


def _one_text(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    return value if isinstance(value, str) else ""
