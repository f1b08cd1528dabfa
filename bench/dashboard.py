"""Dashboard query latency: the admin explorer and chart over 1,000,000 stored events.

    .venv/bin/python bench/dashboard.py [--events 1000000] [--stores clickhouse,postgres]
                                        [--requests 20] [--reload]

For each store, one after the other (ClickHouse, then PostgreSQL):

1. **Data.** ``--events`` events are loaded into a database of the benchmark's own
   (PostgreSQL ``eventrouter_bench_dashboard``, ClickHouse ``bench_dashboard``; created
   when missing, never the test suite's) through the real sink, driven by the real bus as
   ``eventrouter worker`` drives it (role ``worker``, ``Bus.deliver``, batches of the
   sink's documented ``batch.max_events``). The data is kept between runs: loading is
   skipped when ``events`` already holds at least ``--events`` rows all still inside the
   dashboard's "last 7 days" (with :data:`FRESH_MARGIN` to spare); otherwise, or with
   ``--reload``, the database is dropped and loaded again. After a load, what the
   store would have done by itself before anyone looked: PostgreSQL ``VACUUM (ANALYZE)``
   (this machine's server runs with ``autovacuum = off``), ClickHouse ``OPTIMIZE TABLE
   events FINAL`` (background merges). Nothing else is set for the load: the database
   has the server's defaults, as an operator's would.
2. **Server.** ``eventrouter serve --workers 1`` on a free loopback port with a config
   of ``[sinks.warehouse]`` (the store) and ``[admin] store = "warehouse"``, no
   ``[queue]`` (so no broker), ready once ``GET /health`` answers 200; stopped with
   SIGTERM to the process group it was started in.
3. **Requests.** Each endpoint of :func:`endpoints`, authenticated with
   ``Authorization: Bearer <admin token>``: one warm-up request, then ``--requests``
   sequential timed ones (wall time of the whole response, httpx on loopback,
   keep-alive). Every response must be 200; any other status fails the run and its body
   is printed.

The data model (:class:`EventFactory`, deterministic: one seed): events in time order,
spread uniformly over the :data:`SPAN` (6.5 days) before the load starts, so that the
dashboard's ``range=7d``, evaluated at request time, still holds all of them for half a
day; ~90 % track calls with :data:`TRACK_EVENTS`'s 20 names and their skewed weights
(the filtered name, :data:`FILTER_EVENT`, is 7 % of all events), 3.5 % identify and
6.5 % page calls; 50,000 users (20 % of events from logged-out visitors with an
anonymous id only), ``properties.plan`` per visitor in free / pro / enterprise (pro
30 %) on track and page calls, product, order or search properties per name, context
with library, page, userAgent, locale and ip. Each is the JSON bench/ingest.py's
``track_event()`` posts, varied, decoded and normalised by
``eventrouter.events.normalise.to_command`` as the edge does (bench/sinks.py's recipe).

The report, one markdown table (store x endpoint: median, p90, max ms; the 300 ms
target of the explorer's first page and the chart) with the rows stored, the share
matching the filter and the machine, goes to stdout and to
``bench/results/dashboard-latest.md``; the server logs to
``bench/results/dashboard-<store>.log``. Exit status 1 when a response was not 200,
else 0 (a missed target is reported, not an error). :func:`run` measures and returns
the timings with the report (bench/all.py uses it). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import importlib.util
import json
import os
import platform
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import msgspec

BENCH_DIR = Path(__file__).resolve().parent
# bench/sinks.py is loaded under a name of its own (sink_bench), as bench/all.py does.
from ingest import STOP_TIMEOUT, Server, free_port, track_event  # noqa: E402


def _load_sink_bench() -> Any:
    if "sink_bench" in sys.modules:  # loaded already (bench/all.py)
        return sys.modules["sink_bench"]
    spec = importlib.util.spec_from_file_location("sink_bench", BENCH_DIR / "sinks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sink_bench = _load_sink_bench()
log = sink_bench.log
_version = sink_bench._version

from eventrouter import config as config_module  # noqa: E402
from eventrouter.bus.bus import WORKER, Bus, make_plugin_manager  # noqa: E402
from eventrouter.events import model  # noqa: E402
from eventrouter.events.commands import Command  # noqa: E402
from eventrouter.events.normalise import Arrival, to_command  # noqa: E402
from eventrouter.sinks.clickhouse_store import ClickHouseStore  # noqa: E402
from eventrouter.sinks.postgres_store import PostgresStore  # noqa: E402
from eventrouter.store.query import EventFilter, EventStore, PathCondition  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
SINK_NAME = "warehouse"

PG_DATABASE = "eventrouter_bench_dashboard"
PG_SERVER = f"postgresql://postgres@{HOST}:5432/postgres"
PG_URL = f"postgresql+psycopg://postgres@{HOST}:5432/{PG_DATABASE}"
#: What docs/postgres.md has an operator index for the dashboard's filters: the sink's
#: default ``(column, timestamp)`` indexes, ``event`` among them (stated in the config).
PG_INDEXES = ["user_id", "anonymous_id", "event"]
#: And, as docs/postgres.md advises for the pair of filters a dashboard is used with
#: most, a path index on the measured pair: ``(event, properties #>> '{plan}', timestamp)``.
PG_PATH_INDEXES = [["event", "properties.plan"]]
CH_DATABASE = "bench_dashboard"
CH_URL = f"clickhouse+native://default:@{HOST}:9000/{CH_DATABASE}"

#: The dashboard target: median of the explorer's first page and of the chart.
TARGET_MS = 300.0
RANGE = "7d"
RANGE_SPAN = timedelta(days=7)
#: Events are spread over this much time before the load: inside ``range=7d`` for
#: another ``RANGE_SPAN - SPAN`` (12 hours) after loading.
SPAN = timedelta(days=6.5)
#: Loaded data is reused only while its oldest event stays in range this much longer.
FRESH_MARGIN = timedelta(minutes=30)

FILTER_EVENT = "Product Added"
FILTER_PLAN = "pro"

#: Track event names and their share of all events, in %: a shop's skew (the rest of
#: the 100 % are identify and page calls).
TRACK_EVENTS: tuple[tuple[str, float], ...] = (
    ("Product Viewed", 20.0),
    ("Products Searched", 10.0),
    ("Product List Viewed", 9.0),
    ("Product Clicked", 8.0),
    (FILTER_EVENT, 7.0),
    ("Cart Viewed", 5.0),
    ("Video Playback Started", 4.5),
    ("Signed In", 4.0),
    ("Checkout Started", 3.5),
    ("Promotion Viewed", 3.5),
    ("Product Removed", 3.0),
    ("Coupon Entered", 2.5),
    ("Checkout Step Completed", 2.5),
    ("Payment Info Entered", 2.0),
    ("Order Completed", 1.5),
    ("Product Shared", 1.0),
    ("Wishlist Product Added", 1.0),
    ("Signed Up", 0.8),
    ("Order Refunded", 0.4),
    ("Account Deleted", 0.3),
)
IDENTIFY_SHARE = 3.5
PAGE_SHARE = 100.0 - IDENTIFY_SHARE - sum(w for _, w in TRACK_EVENTS)
#: Sent by the shop's backend (analytics-python, source ``backend``), not the browser.
SERVER_SIDE = frozenset({"Order Completed", "Order Refunded", "Signed Up", "Account Deleted"})
USERS = 50_000
ANONYMOUS_VISITORS = 150_000
LOGGED_OUT_SHARE = 0.2
#: A visitor's plan by ``hash % 100``: below 30 pro, below 45 enterprise, else free.
PRO_BELOW, ENTERPRISE_BELOW = 30, 45
_PAGES = ("/", "/products", "/cart", "/checkout", "/account", "/search", "/sale")
_QUERIES = ("running shoes", "rain jacket", "socks", "bottle", "merino", "trail")


# -- events ----------------------------------------------------------------------------------
class EventFactory:
    """Deterministic realistic events (see the module docstring), as commands."""

    def __init__(self, total: int, start: datetime, seed: int = 20261128) -> None:
        self.total = total
        self.start = start
        self.rng = random.Random(seed)
        self.kinds = [name for name, _ in TRACK_EVENTS] + ["identify", "page"]
        weights = [w for _, w in TRACK_EVENTS] + [IDENTIFY_SHARE, PAGE_SHARE]
        self.cum_weights = [sum(weights[: i + 1]) for i in range(len(weights))]
        self.decoder = model.ANY_DECODER  # the edge's own
        self.encode = msgspec.json.Encoder().encode

    def commands(self, first: int, count: int) -> list[Command]:
        """Events ``first`` .. ``first + count - 1`` of ``total``, oldest first."""
        kinds = self.rng.choices(self.kinds, cum_weights=self.cum_weights, k=count)
        step = SPAN / self.total
        out = []
        for offset, kind in enumerate(kinds):
            index = first + offset
            moment = self.start + step * (index + self.rng.random())
            payload, envelope = self.payload(index, kind, moment)
            out.append(to_command(self.decoder.decode(self.encode(payload)), envelope))
        return out

    def payload(self, index: int, kind: str, moment: datetime) -> tuple[dict, Arrival]:
        rng = self.rng
        logged_out = rng.random() < LOGGED_OUT_SHARE and kind not in SERVER_SIDE
        if logged_out:
            visitor = rng.randrange(ANONYMOUS_VISITORS)
            user_id = None
            anonymous_id = f"{visitor:08x}-0a1b-4c2d-8e3f-{visitor * 7919 % 16**12:012x}"
            key = USERS + visitor
        else:
            user = int(USERS * rng.random() ** 1.5)  # some users far more active
            device = rng.randrange(2)
            user_id = f"user-{user:05d}"
            anonymous_id = f"{user:08x}-{device:04x}-4c2d-8e3f-{user * 104729 % 16**12:012x}"
            key = user
        bucket = key * 2654435761 % 2**32 % 100  # the visitor's plan, stable
        plan = (
            "pro" if bucket < PRO_BELOW else "enterprise" if bucket < ENTERPRISE_BELOW else "free"
        )
        body = track_event(index, moment)  # context, product properties, times
        body["userId"] = user_id
        body["anonymousId"] = anonymous_id
        if user_id is None:
            del body["userId"]
        page = body["context"]["page"]
        if kind == "identify":
            body["type"] = "identify"
            del body["event"], body["properties"]
            body["traits"] = {
                "email": f"{user_id or anonymous_id}@example.com",
                "name": f"Customer {key}",
                "plan": plan,
                "created_at": "2025-03-14T09:26:53Z",
            }
        elif kind == "page":
            path = rng.choice(_PAGES)
            body["type"] = "page"
            del body["event"]
            body["name"] = path.strip("/").title() or "Home"
            body["properties"] = {
                "path": path,
                "url": f"https://shop.example.com{path}",
                "title": f"{body['name']} | Example Shop",
                "referrer": page["referrer"],
                "plan": plan,
            }
        else:
            body["event"] = kind
            properties = body["properties"]
            properties["plan"] = plan
            if kind.startswith(("Order", "Checkout", "Payment")):
                properties = {
                    "order_id": f"o-{index:08d}",
                    "total": round(20 + rng.random() * 280, 2),
                    "currency": "EUR",
                    "products": rng.randrange(1, 6),
                    "plan": plan,
                }
            elif kind == "Products Searched":
                query, results = rng.choice(_QUERIES), rng.randrange(60)
                properties = {"query": query, "results": results, "plan": plan}
            body["properties"] = properties
        source = "web"
        if kind in SERVER_SIDE:
            source = "backend"
            body["context"] = {"library": {"name": "analytics-python", "version": "2.3.2"}}
        received = moment + timedelta(milliseconds=20 + rng.random() * 400)
        envelope = Arrival(
            received_at=received, source=source, ip=f"198.51.{key // 250 % 256}.{key % 250 + 1}"
        )
        return body, envelope


# -- stores ----------------------------------------------------------------------------------
@dataclass
class Store:
    """One store the dashboard reads: its sink table and how to manage its database."""

    name: str
    #: The ``[sinks.warehouse]`` table, for the load and for the server alike.
    sink: dict[str, Any]
    #: Events per write: the sink's documented ``batch.max_events``.
    batch_events: int
    create: Callable[[], None]
    drop: Callable[[], None]
    #: After a load: what an operator's database would have done by itself meanwhile.
    settle: Callable[[], str]
    #: Store-specific facts for the report (version, size, parts).
    facts: Callable[[], str]

    @property
    def url(self) -> str:
        return self.sink["url"]

    def reader(self) -> EventStore:
        """The query layer on this store, as the server builds it (close it after)."""
        stores = {"postgres": PostgresStore, "clickhouse": ClickHouseStore}
        return EventStore(stores[self.sink["type"]](self.url))


def postgres_store() -> Store:
    import psycopg

    def create() -> None:
        with psycopg.connect(PG_SERVER, autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            if not exists:
                connection.execute(f"CREATE DATABASE {PG_DATABASE}")

    def drop() -> None:
        with psycopg.connect(PG_SERVER, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")

    def settle() -> str:
        # Autovacuum would vacuum and analyse the insert-only partitions by itself (and
        # never analyses the partitioned parent): do it now, so that every run plans
        # with the same statistics and index-only scans see an up-to-date visibility map.
        started = time.perf_counter()
        with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute("VACUUM (ANALYZE) events")
        return f"VACUUM (ANALYZE) events: {time.perf_counter() - started:.1f} s"

    def facts() -> str:
        with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as connection:
            version = connection.execute("SHOW server_version").fetchone()[0]
            partitions = connection.execute(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname = 'events'"
            ).fetchone()[0]
            indexes = connection.execute(
                "SELECT string_agg(indexname || ' ' || regexp_replace(indexdef, '.* USING ', ''),"
                " '; ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'events'"
            ).fetchone()[0]
            settings = ", ".join(
                f"{name} {connection.execute(f'SHOW {name}').fetchone()[0]}"
                for name in ("shared_buffers", "jit", "autovacuum")
            )
        # The dashboard reads through EventStore, whose connections set their own jit.
        reader = EventStore(PostgresStore(PG_URL))
        try:
            with reader.engine.connect() as connection:
                store_jit = connection.exec_driver_sql("SHOW jit").scalar()
        finally:
            reader.close()
        return (
            f"PostgreSQL {version} ({settings}; the store's connections: jit {store_jit}), "
            f"{partitions} partitions; indexes: {indexes}"
        )

    return Store(
        name="postgres",
        sink={
            "type": "postgres",
            "url": PG_URL,
            "indexes": PG_INDEXES,
            "path_indexes": PG_PATH_INDEXES,
        },
        batch_events=10_000,
        create=create,
        drop=drop,
        settle=settle,
        facts=facts,
    )


def clickhouse_store() -> Store:
    from clickhouse_driver import Client

    def client() -> Client:
        return Client(HOST)

    def create() -> None:
        client().execute(f"CREATE DATABASE IF NOT EXISTS {CH_DATABASE}")

    def drop() -> None:
        client().execute(f"DROP DATABASE IF EXISTS {CH_DATABASE}")

    def settle() -> str:
        # Background merges combine a week of inserts into a few large parts long before
        # anyone looks; merge it all now, so that every run reads the same parts.
        started = time.perf_counter()
        client().execute(f"OPTIMIZE TABLE {CH_DATABASE}.events FINAL")
        parts = _clickhouse_parts(client())
        return (
            f"OPTIMIZE TABLE events FINAL: {time.perf_counter() - started:.1f} s, "
            f"{parts} active part(s)"
        )

    def facts() -> str:
        c = client()
        version = c.execute("SELECT version()")[0][0]
        parts, nbytes = c.execute(
            "SELECT count(), sum(bytes) FROM system.parts WHERE database = %(db)s "
            "AND table = 'events' AND active",
            {"db": CH_DATABASE},
        )[0]
        key = c.execute(
            "SELECT sorting_key FROM system.tables WHERE database = %(db)s AND name = 'events'",
            {"db": CH_DATABASE},
        )[0][0]
        return (
            f"ClickHouse {version}, active parts: {parts}, {nbytes / 1e6:,.0f} MB; ORDER BY ({key})"
        )

    return Store(
        name="clickhouse",
        sink={"type": "clickhouse", "url": CH_URL},
        batch_events=50_000,
        create=create,
        drop=drop,
        settle=settle,
        facts=facts,
    )


def _clickhouse_parts(client: Any) -> int:
    return client.execute(
        "SELECT count() FROM system.parts WHERE database = %(db)s AND table = 'events' AND active",
        {"db": CH_DATABASE},
    )[0][0]


STORES: dict[str, Callable[[], Store]] = {
    "clickhouse": clickhouse_store,
    "postgres": postgres_store,
}


# -- loading ---------------------------------------------------------------------------------
@dataclass
class TableState:
    rows: int
    oldest: datetime | None
    newest: datetime | None


def table_state(store: Store) -> TableState | None:
    """Rows and time span of ``events``; None when the database or table is missing."""
    try:
        reader = store.reader()
        try:
            with reader.engine.connect() as connection:
                rows, oldest, newest = connection.exec_driver_sql(
                    "SELECT count(*), min(timestamp), max(timestamp) FROM events"
                ).one()
        finally:
            reader.close()
    except Exception as exc:  # no database, no table yet
        log(f"{store.name}: no events table to reuse ({type(exc).__name__})")
        return None
    aware = [t if t is None or t.tzinfo else t.replace(tzinfo=UTC) for t in (oldest, newest)]
    return TableState(int(rows), *aware)


def reusable(state: TableState | None, events: int) -> str | None:
    """Why the stored data cannot be used as it is, or None when it can."""
    if state is None or state.rows == 0:
        return "no events stored"
    if state.rows < events:
        return f"{state.rows:,} events stored, {events:,} wanted"
    if state.oldest is None or state.oldest < datetime.now(UTC) - RANGE_SPAN + FRESH_MARGIN:
        return f"the oldest event ({state.oldest:%Y-%m-%d %H:%M} UTC) is too close to leaving 7d"
    return None


@dataclass
class Load:
    seconds: float
    write_seconds: float
    #: What was done after the load (VACUUM, OPTIMIZE), for the report.
    settle: str = ""


async def load(store: Store, events: int) -> Load:
    """``events`` events into ``store`` through the real sink, as ``eventrouter worker``
    writes them: role ``worker``, ``Bus.deliver``, one batch at a time."""
    table = {**store.sink, "batch": {"max_events": store.batch_events, "timeout": "1s"}}
    raw = {"sinks": {SINK_NAME: table}, "server": {"dispatch_timeout": "10m"}}
    config = config_module.parse(raw, f"bench:dashboard:{store.name}", dict(os.environ))
    bus = Bus(config, make_plugin_manager(config), role=WORKER, only=[SINK_NAME])
    factory = EventFactory(events, datetime.now(UTC) - SPAN)
    started = time.perf_counter()
    write_seconds = 0.0
    await bus.start()
    try:
        for first in range(0, events, store.batch_events):
            batch = factory.commands(first, min(store.batch_events, events - first))
            before = time.perf_counter()
            await bus.deliver(SINK_NAME, batch)
            write_seconds += time.perf_counter() - before
            done = first + len(batch)
            if done % (10 * store.batch_events) == 0 or done == events:
                elapsed = time.perf_counter() - started
                log(f"{store.name}: {done:,}/{events:,} events loaded, {elapsed:.0f} s")
    finally:
        await bus.stop()
    seconds = time.perf_counter() - started
    return Load(seconds=seconds, write_seconds=write_seconds)


def ensure_data(store: Store, args: argparse.Namespace) -> Load | None:
    """Reuse the stored events when they fit, else (or with ``--reload``) load anew."""
    reason = "--reload" if args.reload else reusable(table_state(store), args.events)
    if reason is None:
        log(f"{store.name}: reusing the stored events")
        return None
    log(f"{store.name}: loading {args.events:,} events ({reason})")
    store.drop()
    store.create()
    result = asyncio.run(load(store, args.events))
    result.settle = store.settle()
    log(
        f"{store.name}: loaded in {result.seconds:.0f} s ({result.write_seconds:.0f} s in "
        f"the sink's writes); {result.settle}"
    )
    marker = RESULTS_DIR / f"dashboard-load-{store.name}.json"
    marker.write_text(
        json.dumps(
            {
                "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "events": args.events,
                "seconds": round(result.seconds, 1),
                "write_seconds": round(result.write_seconds, 1),
                "settle": result.settle,
                "sink": store.sink,
            },
            indent=2,
        )
        + "\n"
    )
    return result


# -- the server ------------------------------------------------------------------------------
class DashboardServer(Server):
    """bench/ingest.py's server, stopped with SIGTERM to the process started (gunicorn's
    arbiter, which stops its workers), and to its own process group only if it hangs."""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s; killing it")
            os.killpg(process.pid, signal.SIGKILL)  # its own session: nothing else
            process.wait()


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML


def serve(store: Store, workdir: Path, token: str) -> Server:
    """``eventrouter serve`` with the store as the dashboard's, no ``[queue]``."""
    config = workdir / f"{store.name}.toml"
    lines = ['[admin]\nstore = "warehouse"\n', f"[sinks.{SINK_NAME}]"]
    lines += [f"{key} = {_toml(value)}" for key, value in store.sink.items()]
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    env = dict(os.environ)
    env.pop("EVENTROUTER_CONFIG", None)
    env.pop("EVENTROUTER_PORT", None)
    env["EVENTROUTER_DATA_DIR"] = str(workdir / f"{store.name}-data")
    env["EVENTROUTER_ADMIN_TOKEN"] = token
    argv = [str(VENV_BIN / "eventrouter"), "serve", "--config", str(config)]
    argv += ["--host", HOST, "--port", str(port), "--workers", "1"]
    return DashboardServer(
        f"eventrouter ({store.name})",
        argv,
        port=port,
        cwd=workdir,
        env=env,
        ready=urllib.request.Request(f"http://{HOST}:{port}/health"),
        log_path=RESULTS_DIR / f"dashboard-{store.name}.log",
    )


# -- measuring -------------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str
    #: The path and query; a callable builds it from the first page's HTML.
    path: str | Callable[[], str]
    #: Held to :data:`TARGET_MS`.
    target: bool = False


@dataclass
class Timing:
    store: str
    endpoint: Endpoint
    path: str
    ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    #: The untimed first request (the one that fills any cache).
    warmup_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(status == 200 for status in self.statuses)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p90(self) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]


def _query(*pairs: tuple[str, str]) -> str:
    return urlencode(pairs, quote_via=quote)


FILTER = (("range", RANGE), ("event", FILTER_EVENT), ("properties.plan", FILTER_PLAN))
_OLDER = re.compile(r'<a class="older" href="([^"]*)"')


def endpoints(first_page: Callable[[], str]) -> list[Endpoint]:
    """What the dashboard asks for, filtered by one event name and one property."""

    def second_page() -> str:
        match = _OLDER.search(first_page())
        if match is None:
            raise RuntimeError("the explorer's first page has no 'Older »' link")
        return html.unescape(match.group(1))

    name_only = (("range", RANGE), ("event", FILTER_EVENT))
    return [
        Endpoint("explorer first page", f"/admin/events?{_query(*FILTER)}", target=True),
        Endpoint("chart", f"/admin/chart?{_query(*FILTER)}", target=True),
        Endpoint("explorer second page (cursor)", second_page),
        Endpoint(
            "breakdown dimension=event",
            f"/admin/breakdown?{_query(*FILTER, ('dimension', 'event'))}",
        ),
        Endpoint(
            "breakdown dimension=properties.plan (event only)",
            f"/admin/breakdown?{_query(*name_only, ('dimension', 'properties.plan'))}",
        ),
        Endpoint(
            "GET /api/v1/events limit=50",
            f"/api/v1/events?{_query(*FILTER[1:], ('limit', '50'))}",
        ),
        Endpoint("event names (datalist, every explorer page)", "/admin/event-names"),
    ]


def measure_store(store: Store, base_url: str, token: str, requests: int) -> list[Timing]:
    timings: list[Timing] = []
    pages: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:

        def first_page() -> str:
            if "first" not in pages:
                pages["first"] = client.get(endpoints(lambda: "")[0].path).text
            return pages["first"]

        for endpoint in endpoints(first_page):
            try:
                path = endpoint.path() if callable(endpoint.path) else endpoint.path
            except RuntimeError as exc:
                timings.append(Timing(store.name, endpoint, "?", error=str(exc)))
                log(f"{store.name}: {endpoint.name}: {exc}")
                continue
            timing = Timing(store.name, endpoint, path)
            for number in range(requests + 1):  # the first is the warm-up
                started = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    log(
                        f"{store.name}: {endpoint.name}: {response.status_code} for {path}\n"
                        f"{response.text[:4000]}"
                    )
                if number:
                    timing.ms.append(elapsed)
                    timing.statuses.append(response.status_code)
                    continue
                timing.warmup_ms = elapsed
                if response.status_code != 200:
                    timing.error = f"warm-up request: status {response.status_code}"
                elif path.startswith("/api/"):
                    returned = len(response.json()["events"])
                    if returned != 50:
                        timing.error = f"returned {returned} events, not 50"
            timings.append(timing)
            log(
                f"{store.name}: {endpoint.name}: median {timing.median:.1f} ms, "
                f"max {max(timing.ms):.1f} ms"
            )
    return timings


@dataclass
class Shares:
    rows: int
    in_range: int
    named: int
    matching: int

    def line(self) -> str:
        def share(n: int) -> str:
            return f"{n:,} ({100 * n / self.rows:.1f} %)" if self.rows else f"{n:,}"

        return (
            f"{self.rows:,} rows in `events`; in the last 7 days: {share(self.in_range)}; "
            f"`event = {FILTER_EVENT}`: {share(self.named)}; and `properties.plan = "
            f"{FILTER_PLAN}` (the measured filter): {share(self.matching)}"
        )


def shares(store: Store) -> Shares:
    """Counted through the store query layer, with the dashboard's own semantics (on
    ClickHouse ``FINAL``: each event once)."""
    reader = store.reader()
    try:
        since = datetime.now(UTC) - RANGE_SPAN
        state = table_state(store)
        plan = PathCondition("properties", ("plan",), FILTER_PLAN)
        return Shares(
            rows=state.rows if state else 0,
            in_range=reader.count(EventFilter(since=since)),
            named=reader.count(EventFilter(event=FILTER_EVENT, since=since)),
            matching=reader.count(EventFilter(event=FILTER_EVENT, since=since, paths=[plan])),
        )
    finally:
        reader.close()


# -- the report ------------------------------------------------------------------------------
def table(timings: Sequence[Timing]) -> list[str]:
    lines = [
        "| store | endpoint | median ms | p90 ms | max ms | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for t in timings:
        if not t.ms:
            lines.append(f"| {t.store} | {t.endpoint.name} | - | - | - | failed: {t.error} |")
            continue
        if not t.ok:
            bad = sorted({s for s in t.statuses if s != 200})
            verdict = f"**failed**: {t.error or 'status ' + ', '.join(map(str, bad))}"
        elif t.endpoint.target:
            verdict = f"≤ {TARGET_MS:.0f} ms {'✓' if t.median <= TARGET_MS else '✗'}"
        else:
            verdict = ""
        lines.append(
            f"| {t.store} | {t.endpoint.name} | {t.median:.1f} | {t.p90:.1f} | "
            f"{max(t.ms):.1f} | {verdict} |"
        )
    return lines


def git_revision() -> str:
    return (
        subprocess.run(
            ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        or "?"
    )


def machine_info(load_at_start: str) -> list[str]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    load = _load_average()
    packages = ", ".join(
        f"{name} {_version(name)}"
        for name in ("SQLAlchemy", "psycopg", "clickhouse-driver", "clickhouse-sqlalchemy")
    )
    packages += f", falcon {_version('falcon')}, httpx {_version('httpx')}"
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"- nproc: {os.cpu_count()} ({cpu_model}); load average at the start: "
        f"{load_at_start}, at the end: {load}",
        f"- python: {platform.python_version()}; {packages}",
        f"- eventrouter: {_version('eventrouter')}",
    ]


def _load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events stored [1000000]")
    parser.add_argument(
        "--stores",
        default="clickhouse,postgres",
        help=f"comma-separated, from: {', '.join(STORES)} [clickhouse,postgres]",
    )
    parser.add_argument("--requests", type=int, default=20, help="timed requests per endpoint [20]")
    parser.add_argument(
        "--reload", action="store_true", help="drop the stored events and load them again"
    )
    args = parser.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in args.stores if s not in STORES]
    if unknown:
        parser.error(f"unknown store(s) {', '.join(unknown)}; known: {', '.join(STORES)}")
    if args.events < 1 or args.requests < 1:
        parser.error("--events and --requests must be at least 1")
    return args


@dataclass(frozen=True)
class DashboardRun:
    """Every store's timings and the markdown report."""

    timings: list[Timing]
    report: str

    @property
    def failed(self) -> list[Timing]:
        return [t for t in self.timings if not t.ok]


def run(args: argparse.Namespace) -> DashboardRun:
    """Load (or reuse) each store's data, serve it and time the dashboard's requests;
    the report is also written to ``bench/results/dashboard-latest.md``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    load_at_start = _load_average()
    token = secrets.token_urlsafe(24)
    timings: list[Timing] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="eventrouter-bench-dashboard-") as tmp:
        workdir = Path(tmp)
        for name in args.stores:
            store = STORES[name]()
            loaded = ensure_data(store, args)
            if loaded is None:
                marker = RESULTS_DIR / f"dashboard-load-{name}.json"
                when = json.loads(marker.read_text()) if marker.exists() else {}
                load_note = (
                    f"loaded earlier ({when['loaded_at']}, {when['seconds']:.0f} s)"
                    if when
                    else "loaded earlier"
                )
            else:
                load_note = (
                    f"loaded by this run in {loaded.seconds:.0f} s ({loaded.write_seconds:.0f} s "
                    f"in the sink's writes; {loaded.settle})"
                )
            counted = shares(store)
            log(f"{name}: {counted.line()}")
            revision = git_revision()
            with serve(store, workdir, token) as server:
                measured = measure_store(store, server.base_url, token, args.requests)
                problems = server.log_problems()
            timings += measured
            options = ", ".join(
                f"{k} = {_toml(v)}" for k, v in store.sink.items() if k not in ("type", "url")
            )
            notes.append(f"- {name}: {counted.line()}")
            notes.append(f"  - {store.facts()}; sink options: {options or 'the defaults'}")
            notes.append(f"  - data: {load_note}")
            warmups = ", ".join(f"{t.endpoint.name} {t.warmup_ms:.0f}" for t in measured)
            notes.append(f"  - server at {revision}; the warm-up (first) requests, ms: {warmups}")
            if problems:
                notes.append(f"  - server log problems: {'; '.join(problems[:5])}")
    failed = [t for t in timings if not t.ok]
    report = [
        "## Dashboard queries",
        "",
        *table(timings),
        "",
        f"- filter: `range={RANGE}&event={FILTER_EVENT}&properties.plan={FILTER_PLAN}`; "
        f"target: median of {args.requests} requests ≤ {TARGET_MS:.0f} ms for the explorer's "
        f"first page and the chart; each endpoint: 1 warm-up + {args.requests} sequential "
        f"requests to `eventrouter serve --workers 1`; "
        + (
            "every response 200"
            if not failed
            else f"**{len(failed)} endpoint(s) failed** (see stderr)"
        ),
        *notes,
        *machine_info(load_at_start),
    ]
    text = "\n".join(report) + "\n"
    (RESULTS_DIR / "dashboard-latest.md").write_text(text)
    return DashboardRun(timings, text)


def main(argv: Sequence[str] | None = None) -> int:
    result = run(parse_args(argv))
    print(result.report, end="")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
