"""A ClickHouse cluster on loopback for the cluster suite: one ZooKeeper (Debian's
``zookeeperd`` jars, standalone, client port 2191) and two ``clickhouse-server``
processes (Debian's 18.16), each with a config of its own under a temporary directory.

The two servers carry two cluster definitions (``<remote_servers>``):

- ``er_shards``: 2 shards of 1 replica (server 1 is shard 1, server 2 shard 2);
- ``er_replicas``: 1 shard of 2 replicas (``internal_replication``: a write goes to one
  replica and ZooKeeper replicates it).

``{shard}`` and ``{replica}`` are per-server macros, not per cluster, so they suit the
replicated cluster (both servers shard ``01``, replicas ``r1`` and ``r2``); the
``er_shards`` tables are not replicated and use no macro. Distributed DDL (``ON
CLUSTER``) goes through ZooKeeper in both.

Every process is started here and stopped by its PID (SIGTERM, then SIGKILL), by the
fixture's finaliser and, should the test process die first, by an ``atexit`` hook. Ports:
ClickHouse TCP 9101-9102, HTTP 8101-8102, interserver 9201-9202; ZooKeeper 2191. The
system ClickHouse (9000/8123) is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from clickhouse_driver import Client

ZOOKEEPER_PORT = 2191
ZOOKEEPER_CLASSPATH = ":".join(
    ["/usr/share/java/zookeeper.jar", "/usr/share/java/zookeeper-jute.jar"]
)
#: Each server's ports: (TCP, HTTP, interserver).
SERVER_PORTS = ((9101, 8101, 9201), (9102, 8102, 9202))
SHARDS = "er_shards"
REPLICAS = "er_replicas"
#: Seconds a process may take to come up (the machine is shared and slow).
START_TIMEOUT = 90.0
#: Seconds a process may take to stop on SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 30.0
#: Seconds an ``ON CLUSTER`` statement waits for every host (18.16 default: 180).
DDL_TIMEOUT = 60

#: Every process started here and not stopped yet, for the atexit fallback.
_RUNNING: dict[int, subprocess.Popen] = {}


def _stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop ``process`` (only it: by its PID) and wait for it."""
    if process.poll() is None:
        # A SIGSTOPped server would not act on SIGTERM until continued.
        os.kill(process.pid, signal.SIGCONT)
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
    _RUNNING.pop(process.pid, None)


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_RUNNING.values()):
        with contextlib.suppress(OSError):
            _stop_process(process, signal.SIGKILL)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require(binary: str) -> str:
    """The path of ``binary``; a skip when it is missing, a failure when ``CI=true``."""
    path = shutil.which(binary) or (binary if os.access(binary, os.X_OK) else None)
    if path:
        return path
    message = f"{binary} is not installed (apt-get install -y clickhouse-server zookeeperd)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _wait(check, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{_tail(log)}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up in {START_TIMEOUT:.0f}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- ZooKeeper -----------------------------------------------------------------------------
class ZooKeeper:
    """A standalone ZooKeeper with its data under ``root``; the admin server is off."""

    def __init__(self, root: Path, port: int = ZOOKEEPER_PORT) -> None:
        self.root = root
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> ZooKeeper:
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is taken: ZooKeeper cannot start there")
        java = require("java")
        if not Path("/usr/share/java/zookeeper.jar").exists():
            require("/usr/share/zookeeper/bin/zkServer.sh")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = self.root / "zoo.cfg"
        config.write_text(
            "tickTime=2000\n"
            f"dataDir={self.root / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=srvr\n"
        )
        log = self.root / "zookeeper.log"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    java,
                    "-Xmx256m",
                    "-cp",
                    ZOOKEEPER_CLASSPATH,
                    "-Dzookeeper.admin.enableServer=false",
                    "org.apache.zookeeper.server.ZooKeeperServerMain",
                    str(config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _RUNNING[self.process.pid] = self.process
        _wait(self._ok, "ZooKeeper", self.process, log)
        return self

    def _ok(self) -> bool:
        """Serving requests: ``ruok`` says ``imok`` before that, and a client that
        connects then is hung up on (and 18.16 then crashes on its first use of it)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"srvr")
                return sock.recv(64).startswith(b"Zookeeper version")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process)


# -- ClickHouse servers --------------------------------------------------------------------
def _replica(index: int) -> str:
    host = "<host>127.0.0.1</host>"
    return f"<replica>{host}<port>{SERVER_PORTS[index][0]}</port></replica>"


def remote_servers() -> str:
    """The two cluster definitions over the two servers."""
    # Not replicated: 18.16 refuses ALTER ... ON CLUSTER (a mutation) on a plain
    # MergeTree when the cluster says its shards replicate internally.
    shards = "".join(
        f"<shard><internal_replication>false</internal_replication>{_replica(i)}</shard>"
        for i in range(len(SERVER_PORTS))
    )
    replicas = "".join(_replica(i) for i in range(len(SERVER_PORTS)))
    return (
        f"<remote_servers><{SHARDS}>{shards}</{SHARDS}>"
        f"<{REPLICAS}><shard><internal_replication>true</internal_replication>{replicas}"
        f"</shard></{REPLICAS}></remote_servers>"
    )


def server_config(root: Path, index: int) -> str:
    tcp, http, interserver = SERVER_PORTS[index]
    return f"""<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{root}/log/server.log</log>
        <errorlog>{root}/log/error.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp}</tcp_port>
    <http_port>{http}</http_port>
    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <users_config>{root}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_concurrent_queries>50</max_concurrent_queries>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_server_memory_usage>1073741824</max_server_memory_usage>
    {remote_servers()}
    <zookeeper>
        <node><host>127.0.0.1</host><port>{ZOOKEEPER_PORT}</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros><shard>01</shard><replica>r{index + 1}</replica></macros>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
"""


USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default>
        <max_memory_usage>1000000000</max_memory_usage>
        <load_balancing>in_order</load_balancing>
        <distributed_ddl_task_timeout>{ddl_timeout}</distributed_ddl_task_timeout>
        <connect_timeout_with_failover_ms>1000</connect_timeout_with_failover_ms>
    </default></profiles>
    <users><default>
        <password></password>
        <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile>
        <quota>default</quota>
    </default></users>
    <quotas><default><interval>
        <duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
"""


@dataclass
class ClickHouseServer:
    """One ``clickhouse-server`` with its config, data and logs under ``root``."""

    root: Path
    index: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return SERVER_PORTS[self.index][0]

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server (what a sink's ``url`` is)."""
        return f"clickhouse+native://default:@127.0.0.1:{self.port}/{database}"

    def client(self, database: str = "default") -> Client:
        return Client("127.0.0.1", port=self.port, database=database, connect_timeout=5)

    def query(self, sql: str, params: dict | None = None, database: str = "default") -> list:
        client = self.client(database)
        try:
            return client.execute(sql, params)
        finally:
            client.disconnect()

    def start(self) -> ClickHouseServer:
        """Start (or start again, on the same data) and wait until it answers."""
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is taken: clickhouse-server cannot start")
        binary = require("clickhouse-server")
        for folder in ("log", "data", "tmp", "user_files", "format_schemas"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        config = self.root / "config.xml"
        config.write_text(server_config(self.root, self.index))
        (self.root / "users.xml").write_text(USERS.format(ddl_timeout=DDL_TIMEOUT))
        log = self.root / "log" / "stdout.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [binary, f"--config-file={config}"],
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _RUNNING[self.process.pid] = self.process
        _wait(self._answers, f"clickhouse-server {self.port}", self.process, log)
        return self

    def _answers(self) -> bool:
        """Answers, and has a ZooKeeper session (distributed DDL needs it)."""
        if not port_open(self.port):
            return False
        try:
            return bool(self.query("SELECT count() FROM system.zookeeper WHERE path = '/'"))
        except Exception:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            _stop_process(self.process, sig)

    def kill(self) -> None:
        """Down at once, as a crash: SIGKILL, by PID."""
        self.stop(signal.SIGKILL)


@dataclass
class Cluster:
    zookeeper: ZooKeeper
    servers: list[ClickHouseServer]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.zookeeper.stop()


def start_cluster(root: Path) -> Cluster:
    """ZooKeeper, then the two servers; what started is stopped if a later one fails."""
    zookeeper = ZooKeeper(root / "zookeeper")
    cluster = Cluster(zookeeper, [])
    try:
        zookeeper.start()
        for index in range(len(SERVER_PORTS)):
            server = ClickHouseServer(root / f"clickhouse{index + 1}", index)
            cluster.servers.append(server)
            server.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def clickhouse_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """ZooKeeper and two ClickHouse servers for one test module, stopped by PID after it."""
    cluster = start_cluster(tmp_path_factory.mktemp("clickhouse-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
