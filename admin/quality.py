"""The data-quality pages (docs/data-quality.md): the event catalogue with search and
a draft plan, and the violations over time per event and rule with example payloads.

They read the admin store's quality tables (``Store.quality_tables()``), opened once
and closed with the dashboard. Every name, path and payload shown is the client's text:
the templates escape it (Jinja autoescape) and never mark it safe, and example payloads
are shown as text inside ``<pre>``, never parsed into the page.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon
import falcon.asgi

from eventrouter.admin.views import Dashboard, _View
from eventrouter.errors import APIError

#: How far back the violations page looks unless ``days`` says otherwise.
DEFAULT_DAYS = 7
MAX_DAYS = 90


class QualityTablesOf:
    """The admin store's quality tables, opened on first use, closed with the dashboard."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard
        self._tables: Any = None

    def get(self) -> Any:
        if self._tables is None:
            sink = self.d.bus.store_sink()
            tables = sink.store().quality_tables() if sink is not None else None
            if tables is None:
                raise APIError(503, "no_store", "no store keeps the quality tables")
            self._tables = tables
            self.d.closers.append(tables.close)
        return self._tables


def _source(req: falcon.asgi.Request, dashboard: Dashboard) -> str | None:
    source = req.get_param("source") or None
    known = {s.name for s in dashboard.config.sources} or {"default"}
    if source is not None and source not in known:
        raise APIError(400, "invalid_param", "source: no such source")
    return source


def catalogue_entries(rows: list[Any]) -> list[dict[str, Any]]:
    """The catalogue rows grouped per entry: volume, first and last seen, and each path
    with its types and their share of the path's count."""
    entries: dict[tuple, dict[str, Any]] = {}
    paths: dict[tuple, dict[str, list]] = defaultdict(dict)
    for row in rows:
        key = (row.source, row.kind, row.name)
        entry = entries.setdefault(
            key,
            {
                "source": row.source,
                "kind": row.kind,
                "name": row.name,
                "volume": 0,
                "first_seen": row.first_seen,
                "last_seen": row.last_seen,
            },
        )
        entry["first_seen"] = min(entry["first_seen"], row.first_seen)
        entry["last_seen"] = max(entry["last_seen"], row.last_seen)
        if row.path == "":
            entry["volume"] += row.count
            continue
        paths[key].setdefault(row.path, []).append(row)
    out = []
    for key, entry in sorted(entries.items()):
        listed = []
        for path, found in sorted(paths[key].items()):
            total = sum(r.count for r in found)
            listed.append(
                {
                    "path": path,
                    "count": total,
                    "types": [
                        {"type": r.json_type, "share": round(100 * r.count / total)}
                        for r in sorted(found, key=lambda r: -r.count)
                    ],
                    "first_seen": min(r.first_seen for r in found),
                    "last_seen": max(r.last_seen for r in found),
                }
            )
        entry["paths"] = listed
        out.append(entry)
    return out


class CatalogueView(_View):
    """``/admin/catalogue``: every entry per source, with search (``q``)."""

    def __init__(self, dashboard: Dashboard, tables: QualityTablesOf) -> None:
        super().__init__(dashboard)
        self.tables = tables

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        query = (req.get_param("q") or "").strip()[:200]
        try:
            source = _source(req, self.d)
            rows = await asyncio.to_thread(self.tables.get().catalogue, source, query or None)
        except APIError as exc:
            return self.error(req, resp, exc, session)
        self.d.render(
            req,
            resp,
            "catalogue.html",
            entries=catalogue_entries(rows),
            q=query,
            source=source or "",
            sources=[s.name for s in self.d.config.sources],
            session=session,
        )


class DraftView(_View):
    """``/admin/catalogue/draft?source=S``: the draft plan of ``eventrouter plan draft``,
    as a TOML download (without ``source``: of the only source, else back to the
    catalogue page to choose one)."""

    def __init__(self, dashboard: Dashboard, tables: QualityTablesOf) -> None:
        super().__init__(dashboard)
        self.tables = tables

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        from eventrouter.quality.cli import draft_plan

        session = self.d.require(req)
        try:
            source = _source(req, self.d)
            if source is None:
                known = [s.name for s in self.d.config.sources] or ["default"]
                if len(known) != 1:  # which one? chosen on the catalogue page
                    raise falcon.HTTPSeeOther("/admin/catalogue")
                source = known[0]
            rows = await asyncio.to_thread(self.tables.get().catalogue, source, None)
        except APIError as exc:
            return self.error(req, resp, exc, session)
        resp.content_type = "text/plain; charset=utf-8"
        resp.set_header("Content-Disposition", 'attachment; filename="plan.toml"')
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.text = draft_plan(rows, source)


class ViolationsView(_View):
    """``/admin/violations``: violations over time (per hour) per event and rule, with
    an example payload each, and the events a plan dropped."""

    def __init__(self, dashboard: Dashboard, tables: QualityTablesOf) -> None:
        super().__init__(dashboard)
        self.tables = tables

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        session = self.d.require(req)
        try:
            source = _source(req, self.d)
            days = req.get_param_as_int("days", min_value=1, max_value=MAX_DAYS) or DEFAULT_DAYS
            since = datetime.now(UTC) - timedelta(days=days)
            tables = self.tables.get()
            counts = await asyncio.to_thread(tables.violations, source, since)
            dropped = await asyncio.to_thread(tables.rejected, source, since, 50)
        except falcon.HTTPBadRequest:
            return self.error(
                req, resp, APIError(400, "invalid_param", f"days: 1 to {MAX_DAYS}"), session
            )
        except APIError as exc:
            return self.error(req, resp, exc, session)
        groups: dict[tuple, dict[str, Any]] = {}
        for row in counts:
            key = (row.source, row.kind, row.name, row.rule, row.path, row.policy)
            group = groups.setdefault(
                key,
                {
                    "source": row.source,
                    "kind": row.kind,
                    "name": row.name,
                    "rule": row.rule,
                    "path": row.path,
                    "policy": row.policy,
                    "total": 0,
                    "hours": [],
                    "example": row.example,
                    "last_seen": row.last_seen,
                },
            )
            group["total"] += row.count
            group["hours"].append({"hour": row.hour, "count": row.count})
            group["last_seen"] = max(group["last_seen"], row.last_seen)
        listed = sorted(groups.values(), key=lambda g: (-g["total"], g["source"], g["name"]))
        for group in listed:
            peak = max(h["count"] for h in group["hours"])
            for hour in group["hours"]:
                hour["height"] = max(1, round(100 * hour["count"] / peak))
            group["hours"].sort(key=lambda h: h["hour"])
        self.d.render(
            req,
            resp,
            "violations.html",
            groups=listed,
            dropped=[{"row": r, "violations": json.loads(r.violations)} for r in dropped],
            source=source or "",
            days=days,
            sources=[s.name for s in self.d.config.sources],
            session=session,
        )


def add_routes(app: falcon.asgi.App, dashboard: Dashboard) -> None:
    tables = QualityTablesOf(dashboard)
    app.add_route("/admin/catalogue", CatalogueView(dashboard, tables))
    app.add_route("/admin/catalogue/draft", DraftView(dashboard, tables))
    app.add_route("/admin/violations", ViolationsView(dashboard, tables))
