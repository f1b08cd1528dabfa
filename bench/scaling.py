"""Scaling: ``/v1/batch`` → RabbitMQ → ``eventrouter worker`` (N of them) → ClickHouse, N side
by side in one run, with the CPU each component spends per event stored.

    .venv/bin/python bench/scaling.py [--quick] [--duration 20] [--workers 1,2]
        [--connections 32] [--server-workers 2] [--drain-timeout 120]
        [--shards | --shards-config FILE --shards-ports 9001,9002] [--shard-workers 2]
        [--quorum]

For each scenario the script starts ``eventrouter serve`` in queue mode and the
scenario's ``eventrouter worker`` processes, all reading one config whose only sink is
``[sinks.warehouse]``, a ClickHouse database of the scenario's own; drives ``/v1/batch``
(100 events a request, the ingest benchmark's body) with wrk for ``--duration`` seconds;
waits until every acknowledged event is stored (or ``--drain-timeout`` runs out); and
reads the CPU time of each component from ``/proc/<pid>/stat`` before the load and once
everything is stored:

- **edge**: the ``eventrouter serve`` process group (gunicorn and its workers);
- **workers**: the ``eventrouter worker`` processes;
- **rabbitmq**: the node whose ``beam.smp`` listens on the broker URL's port;
- **clickhouse**: every ``clickhouse-server`` listening on the measured native ports
  (9000, or ``--shards-ports``).

CPU per event is a component's CPU seconds over that window divided by the events
stored in it; events/s stored is the rows stored while wrk ran, over its duration.

**1 against 2 ClickHouse shards.** ``--shards-config FILE`` adds two scenarios that
differ only in the sink, both with ``--shard-workers`` workers: the default single-node
``[sinks.warehouse]`` (not run twice when ``--workers`` has that count already) and FILE's. FILE
holds a ``[sinks.warehouse]`` table (for instance ``type = "clickhouse"``, ``url``,
``cluster = "NAME"``); ``${BENCH_DATABASE}`` in it is replaced (by the config loader's
own interpolation) with the scenario's fresh database name, and rows are counted with
``SELECT count() FROM events`` through FILE's ``url``. ``--shards-ports`` lists the
native ports of the servers to measure (and to drop the database on afterwards).

``--shards`` does all of that itself: it starts the cluster suite's two-shard setup
(ZooKeeper and two ``clickhouse-server`` processes on loopback ports 9101 and 9102, from
``tests/cluster/clickhouse_support.py``, whose cluster ``er_shards`` has one replica per
shard), writes FILE for it (``cluster = "er_shards"``, the same batch as the single-node
sink) and stops every process it started, by PID, at the end.

**Quorum queues on three RabbitMQ nodes.** ``--quorum`` starts the cluster suite's three
nodes (``.ci/rabbitmq-cluster``, AMQP 5681-5683, ``tests/cluster/rabbit_support.py``) and
adds a scenario with one worker whose ``[queue]`` lists the three nodes with
``queue_type = "quorum"``; its RabbitMQ column sums the three nodes' CPU (a quorum queue
writes each message on every member), beside the single classic node of the other
scenarios.

Everything runs on 127.0.0.1 and is stopped by its own PID. Prints a markdown table,
also written to ``bench/results/scaling-latest.md``. Exit status 1 if an acknowledged
event was not stored in time (lost, or the drain timed out).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.append(str(BENCH_DIR))

import ingest  # noqa: E402
import queue_mode  # noqa: E402
from clickhouse_driver import Client  # noqa: E402
from queue_mode import BenchQueue  # noqa: E402

RESULTS = ingest.RESULTS_DIR / "scaling-latest.md"
SINK = "warehouse"
COMPONENTS = ("edge", "workers", "rabbitmq", "clickhouse")
#: ``--quick``: a smoke run; the figures mean little.
QUICK = {"duration": 4.0, "drain_timeout": 60.0}
#: The default sink: the single ClickHouse server on loopback.
SINGLE_NODE_SINK = (
    f"[sinks.{SINK}]\n"
    'type = "clickhouse"\n'
    'url = "clickhouse+native://default:@127.0.0.1:9000/${BENCH_DATABASE}"\n'
    'batch = { max_events = 50000, timeout = "1s" }\n'
)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the scenarios -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """One run: its label, its sink table (TOML), its workers, the ClickHouse servers to
    measure (native ports)."""

    label: str
    sink_toml: str
    workers: int
    clickhouse_ports: tuple[int, ...] = (9000,)
    #: The RabbitMQ nodes (AMQP URLs) and queue type; empty: ``--broker``, classic queues.
    broker_urls: tuple[str, ...] = ()
    queue_type: str = "classic"


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    found = [
        Scenario(f"{n} worker{'s' if n > 1 else ''}, 1 ClickHouse server", SINGLE_NODE_SINK, n)
        for n in args.workers
    ]
    if args.shards_config is not None:
        text = Path(args.shards_config).read_text()
        if f"[sinks.{SINK}]" not in text:
            raise SystemExit(f"{args.shards_config}: needs a [sinks.{SINK}] table")
        n = args.shard_workers
        workers = f"{n} worker{'s' if n > 1 else ''}"
        if n not in args.workers:  # else the single-server run with n workers is the "1 shard"
            found.append(Scenario(f"{workers}, 1 shard", SINGLE_NODE_SINK, n))
        shards = tuple(args.shards_ports)
        label = f"{workers}, 2 shards ({Path(args.shards_config).name})"
        found.append(Scenario(label, text, n, shards))
    if args.quorum_urls:
        found.append(
            Scenario(
                "1 worker, 3 RabbitMQ nodes, quorum queues",
                SINGLE_NODE_SINK,
                1,
                broker_urls=tuple(args.quorum_urls),
                queue_type="quorum",
            )
        )
    return found


# -- CPU by component -----------------------------------------------------------------------
def listening_pids(port: int) -> set[int]:
    """The processes holding a TCP socket that listens on ``port`` (IPv4 or IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    pids.add(int(entry.name))
                    break
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return pids


def group_pids(leader: int) -> set[int]:
    """The processes of the process group ``leader`` leads (a server and its workers)."""
    return set(queue_mode.cpu_seconds_where(lambda _, __, fields: int(fields[2]) == leader))


def cpu_seconds(pids: set[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each of ``pids`` still running."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # exited
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[pid] = sum(int(f) for f in fields[11:15]) / ticks
    return found


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two snapshots, over the processes of the second (one born
    meanwhile counts from 0; one gone meanwhile is not counted)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


# -- one scenario ---------------------------------------------------------------------------
@dataclass
class Result:
    scenario: Scenario
    acknowledged: int = 0
    load_seconds: float = 0.0
    stored_during_load: int = 0
    stored: int = 0
    drained_after_s: float | None = None
    non_2xx: int = 0
    socket_errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def stored_per_s(self) -> float:
        return self.stored_during_load / self.load_seconds if self.load_seconds else 0.0

    @property
    def lost(self) -> int:
        return max(0, self.acknowledged - self.stored)

    def cpu_us_per_event(self, component: str) -> float | None:
        seconds = self.cpu.get(component)
        if seconds is None or not self.stored:
            return None
        return seconds / self.stored * 1e6


def sink_client(sink_toml: str, database: str) -> Client:
    """A client of the sink's database, from its ``url`` (loopback only)."""
    match = re.search(r'^url\s*=\s*"([^"]+)"', sink_toml, re.MULTILINE)
    if match is None:
        raise SystemExit(f"[sinks.{SINK}] has no url")
    parts = urlsplit(match.group(1).replace("${BENCH_DATABASE}", database))
    queue_mode.check_loopback(f"tcp://{parts.hostname}")
    return Client(parts.hostname, port=parts.port or 9000, database=database)


def rows(client: Client) -> int:
    return client.execute("SELECT count() FROM events")[0][0]


def run_scenario(
    scenario: Scenario, args: argparse.Namespace, body: Path, events_per_request: int
) -> Result:
    stamp = f"{datetime.now(UTC):%Y%m%d%H%M%S}{secrets.token_hex(3)}"
    database = f"bench_scaling_{stamp}"
    prefix = f"bench-scaling-{stamp}"
    workdir = Path(tempfile.mkdtemp(prefix="eventrouter-bench-scaling-"))
    config = workdir / "scaling.toml"
    urls = list(scenario.broker_urls) or [args.broker]
    url_toml = f'"{urls[0]}"' if len(urls) == 1 else "[" + ", ".join(f'"{u}"' for u in urls) + "]"
    config.write_text(
        f'[queue]\nurl = {url_toml}\nprefix = "{prefix}"\nqueue_type = "{scenario.queue_type}"\n\n'
        f"{scenario.sink_toml}"
    )
    env = dict(os.environ)
    env.pop("EVENTROUTER_CONFIG", None)
    env["EVENTROUTER_DATA_DIR"] = str(workdir / "data")
    env["EVENTROUTER_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    env["BENCH_DATABASE"] = database
    bench_queue = BenchQueue(urls[0], prefix)
    bench_queue.queue = f"{prefix}.sink.{SINK}"
    bench_queue.dead_queue = f"{bench_queue.queue}.dead"
    port = ingest.free_port()
    bin_dir = ingest.VENV_BIN
    slug = re.sub(r"[^a-z0-9]+", "-", scenario.label.lower()).strip("-")
    server = ingest.Server(
        f"eventrouter-scaling-{slug}",
        [str(bin_dir / "eventrouter"), "serve", "--config", str(config), "--host",
         ingest.HOST, "--port", str(port), "--workers", str(args.server_workers)],
        port=port,
        cwd=workdir,
        env=env,
        ready=urllib.request.Request(f"http://{ingest.HOST}:{port}/health"),
        log_path=ingest.RESULTS_DIR / f"scaling-{slug}-server.log",
    )  # fmt: skip
    broker_ports = [urlsplit(url).port or 5672 for url in urls]
    result = Result(scenario)
    with ExitStack() as stack:
        stack.callback(bench_queue.delete)
        stack.callback(drop_database, scenario, database)
        stack.enter_context(server)
        workers = queue_mode.start_workers(
            stack, scenario.workers, config=config, cwd=workdir, env=env, log_name=f"scaling-{slug}"
        )
        client = sink_client(scenario.sink_toml, database)
        stack.callback(client.disconnect)
        before_rows = queue_mode.first_count(lambda: rows(client), workers)
        pids = {
            "edge": group_pids(server.pid),
            "workers": set().union(*(group_pids(w.pid) for w in workers)),
            "rabbitmq": set().union(*(listening_pids(p) for p in broker_ports)),
            "clickhouse": set().union(*(listening_pids(p) for p in scenario.clickhouse_ports)),
        }
        before = {name: cpu_seconds(p) for name, p in pids.items()}
        log(f"{scenario.label}: wrk -c{args.connections} -d{args.duration:g}s POST /v1/batch")
        wrk, _ = ingest.run_wrk(
            f"{server.base_url}/v1/batch", body, args.duration, args.connections
        )
        result.load_seconds = wrk.seconds or args.duration
        result.non_2xx = wrk.status
        result.socket_errors = wrk.socket_errors
        result.acknowledged = (wrk.requests - wrk.status) * events_per_request
        result.stored_during_load = rows(client) - before_rows
        load_end = time.monotonic()
        while True:
            result.stored = rows(client) - before_rows
            if result.stored >= result.acknowledged:
                result.drained_after_s = time.monotonic() - load_end
                break
            if time.monotonic() - load_end > args.drain_timeout:
                break
            time.sleep(0.5)
        pids["edge"] |= group_pids(server.pid)  # a worker gunicorn replaced meanwhile
        after = {name: cpu_seconds(p) for name, p in pids.items()}
        result.cpu = {name: used(before[name], after[name]) for name in COMPONENTS if pids[name]}
    return result


def drop_database(scenario: Scenario, database: str) -> None:
    for port in scenario.clickhouse_ports:
        try:
            client = Client(ingest.HOST, port=port)
            client.execute(f"DROP DATABASE IF EXISTS {database}")  # our own generated name
            client.disconnect()
        except Exception as exc:  # a server down: say so, the run's figures still stand
            log(f"could not drop {database} on port {port}: {exc}")


# -- the report ---------------------------------------------------------------------------------
def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def report(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        "# Scaling: /v1/batch → RabbitMQ → eventrouter worker(s) → ClickHouse",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()} "
        f"({platform.processor() or platform.machine()}); load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; wrk "
        f"{args.connections} connections for {args.duration:g} s per scenario; one edge "
        f"with {args.server_workers} gunicorn workers; 100 events a request.",
        "",
        "| scenario | acknowledged | stored | events/s stored | drained after | lost "
        "| edge µs/event | workers µs/event | rabbitmq µs/event | clickhouse µs/event "
        "| total µs/event |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        per = {c: r.cpu_us_per_event(c) for c in COMPONENTS}
        known = [v for v in per.values() if v is not None]
        drained = f"{r.drained_after_s:.1f} s" if r.drained_after_s is not None else "no"
        lines.append(
            f"| {r.scenario.label} | {r.acknowledged:,} | {r.stored:,} | "
            f"{r.stored_per_s:,.0f} | {drained} | {r.lost:,} | "
            + " | ".join(_us(per[c]) for c in COMPONENTS)
            + f" | {_us(sum(known) if known else None)} |"
        )
    lines += [
        "",
        "CPU per event: each component's user + system CPU time (/proc/<pid>/stat) from "
        "the start of the load until every acknowledged event was stored, over the events "
        "stored. RabbitMQ and ClickHouse are the machine's shared servers: whatever else "
        "used them meanwhile is counted too. On 2 cores the components compete for the "
        "same CPUs, so events/s says how the total cost is shared out, not what more "
        "cores would give: size from the µs/event (docs/scaling.md).",
    ]
    if any(r.non_2xx or r.socket_errors for r in results):
        lines.append("")
        lines += [
            f"- {r.scenario.label}: {r.non_2xx} non-2xx, {r.socket_errors} socket errors"
            for r in results
        ]
    return "\n".join(lines) + "\n"


def positive_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated positive integers")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (4 s of load)")
    parser.add_argument("--duration", type=float, help="seconds of load per scenario [20]")
    parser.add_argument(
        "--workers",
        type=positive_list,
        default=[1, 2],
        help="eventrouter workers of each scenario, side by side [1,2]",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections [32]")
    parser.add_argument("--server-workers", type=int, default=2, help="gunicorn workers [2]")
    parser.add_argument("--drain-timeout", type=float, help="seconds [120]")
    parser.add_argument("--broker", default=ingest.DEFAULT_BROKER, help="RabbitMQ URL")
    parser.add_argument(
        "--shards",
        action="store_true",
        help="start two ClickHouse shards (the cluster suite's) and add 1 against 2 shards",
    )
    parser.add_argument(
        "--quorum",
        action="store_true",
        help="start three RabbitMQ nodes (the cluster suite's) and add 1 worker on quorum queues",
    )
    parser.add_argument(
        "--shards-config", metavar="FILE", help="a [sinks.warehouse] table: adds 1 against 2 shards"
    )
    parser.add_argument(
        "--shards-ports",
        type=positive_list,
        default=[9000],
        help="native ports of the sharded config's servers [9000]",
    )
    parser.add_argument(
        "--shard-workers",
        type=int,
        default=2,
        help="eventrouter workers of the shard scenarios [2]",
    )
    args = parser.parse_args(argv)  # fmt: skip
    args.quorum_urls = []  # --quorum: the nodes' URLs, once started (run())
    defaults = {"duration": 20.0, "drain_timeout": 120.0}
    for name, value in (QUICK if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("duration", "connections", "server_workers", "drain_timeout", "shard_workers"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.shards and args.shards_config is not None:
        parser.error("--shards starts its own shards: leave out --shards-config")
    if args.shards_config is not None and not Path(args.shards_config).is_file():
        parser.error(f"--shards-config {args.shards_config}: no such file")
    queue_mode.check_loopback(args.broker)
    return args


def run(args: argparse.Namespace) -> list[Result]:
    """Every scenario, one after the other (with ``--shards``, the shards started first and
    stopped after the last)."""
    ingest.RESULTS_DIR.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="eventrouter-bench-scaling-body-"))
    batch = next(s for s in ingest.make_scenarios(datetime.now(UTC)) if s.name == "batch")
    body = workdir / "batch.json"
    body.write_bytes(batch.body)
    with ExitStack() as stack:
        if args.shards:
            start_shards(args, stack)
        if args.quorum:
            start_rabbit_cluster(args, stack)
        return [run_scenario(s, args, body, batch.events_per_request) for s in scenarios(args)]


#: ``--shards``: the sink on the cluster suite's two shards (``${CLUSTER_URL}`` filled in).
SHARDED_SINK = (
    f"[sinks.{SINK}]\n"
    'type = "clickhouse"\n'
    'url = "${CLUSTER_URL}"\n'
    'cluster = "er_shards"\n'
    'batch = { max_events = 50000, timeout = "1s" }\n'
)


def _cluster_support(module: str):
    """A module of the cluster suite's setup (tests/cluster/), imported from the repository."""
    repository = BENCH_DIR.parent
    if str(repository) not in sys.path:
        sys.path.append(str(repository))
    return __import__(f"tests.cluster.{module}", fromlist=[module])


def start_rabbit_cluster(args: argparse.Namespace, stack: ExitStack) -> None:
    """``--quorum``: the cluster suite's three RabbitMQ nodes (.ci/rabbitmq-cluster, AMQP
    5681-5683), stopped by PID when ``stack`` closes; their URLs go to
    ``args.quorum_urls``."""
    support = _cluster_support("rabbit_support")
    log("starting three RabbitMQ nodes (5681-5683)")
    cluster = support.RabbitCluster(Path(tempfile.mkdtemp(prefix="eventrouter-bench-rabbit-")))
    stack.callback(cluster.stop)
    cluster.start()
    args.quorum_urls = cluster.urls


def start_shards(args: argparse.Namespace, stack: ExitStack) -> None:
    """``--shards``: two shards on loopback, stopped by PID when ``stack`` closes; points
    ``--shards-config`` and ``--shards-ports`` at them."""
    shards = _cluster_support("clickhouse_support")
    root = Path(tempfile.mkdtemp(prefix="eventrouter-bench-shards-"))
    log("starting ZooKeeper and two ClickHouse shards (9101, 9102)")
    cluster = shards.start_cluster(root)
    stack.callback(cluster.stop)
    first = cluster.servers[0]
    url = first.url("DATABASE").replace("DATABASE", "${BENCH_DATABASE}")
    config = root / "two-shards.toml"
    config.write_text(SHARDED_SINK.replace("${CLUSTER_URL}", url))
    args.shards_config = str(config)
    args.shards_ports = [server.port for server in cluster.servers]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    text = report(results, args)
    RESULTS.write_text(text)
    print(text)
    return 1 if any(r.lost or r.drained_after_s is None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
