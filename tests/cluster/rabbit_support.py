"""A 3-node RabbitMQ cluster on loopback for the cluster suite (issue 21, item 1).

The nodes are Debian's ``rabbitmq-server``, started by ``.ci/rabbitmq-cluster`` (the
script ``bash .ci/services cluster`` uses too): ``er-c1@localhost`` .. ``er-c3@localhost``,
AMQP on 127.0.0.1:5681-5683, Erlang distribution on 25681-25683, data, logs and the
cluster's own Erlang cookie in a temporary directory. The machine's own node (5672) is
never touched. Each node's PID (its ``beam.smp``) is in ``DIR/nN/pid``: the session
fixture stops every node by that PID at the end, after a failure too, with an ``atexit``
fallback for an interrupted run; a test kills one with SIGKILL the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import eventually

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "rabbitmq-cluster"
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
NODES = (1, 2, 3)
AMQP_BASE = 5680
#: The longest the script may take to start and cluster the 3 nodes (a busy 2-core machine).
START_GUARD = 300


#: Where ``bash .ci/services cluster`` starts the cluster (RABBITMQ_CLUSTER_DIR there).
SHARED_DIR = Path(os.environ.get("RABBITMQ_CLUSTER_DIR", "/tmp/eventrouter-rabbitmq-cluster"))


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def node_name(n: int) -> str:
    return f"er-c{n}@localhost"


class RabbitCluster:
    """The running cluster: its URLs, ``rabbitmqctl`` against one node, faults by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    # -- addresses ---------------------------------------------------------------------
    def url(self, n: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{AMQP_BASE + n}//"

    @property
    def urls(self) -> list[str]:
        return [self.url(n) for n in NODES]

    # -- the script --------------------------------------------------------------------
    def _script(self, *args: str, timeout: float = START_GUARD) -> str:
        result = subprocess.run(
            ["bash", str(SCRIPT), args[0], str(self.directory), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f".ci/rabbitmq-cluster {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def start(self) -> RabbitCluster:
        self._script("start")
        return self

    def stop(self) -> None:
        """Stop every node by its PID (SIGTERM, then SIGKILL); idempotent."""
        with contextlib.suppress(Exception):
            self._script("stop", timeout=120)
        for n in NODES:  # the script failed or timed out: no node may outlive the run
            if (pid := self.pid(n)) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def start_node(self, n: int) -> None:
        """Start node ``n`` again (from its data: it rejoins the cluster by itself)."""
        self._script("start-node", str(n))

    def ctl(self, n: int, *args: str, timeout: float = 90) -> str:
        """``rabbitmqctl -n er-cN@localhost ARGS`` with the cluster's cookie; its stdout."""
        return self._script("ctl", str(n), *args, timeout=timeout)

    # -- processes ---------------------------------------------------------------------
    def pid(self, n: int) -> int | None:
        """The running node's ``beam.smp`` PID, or None once it is gone."""
        path = self.directory / f"n{n}" / "pid"
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill(self, n: int) -> None:
        """SIGKILL node ``n``'s VM: no goodbye to its peers or clients."""
        pid = self.pid(n)
        assert pid is not None, f"{node_name(n)} is not running"
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: self.pid(n) is None, f"{node_name(n)} gone")

    # -- what the nodes say ------------------------------------------------------------
    def running_nodes(self, asked: int) -> list[str]:
        """The cluster's running members, as node ``asked`` sees them."""
        out = self.ctl(asked, "eval", "rabbit_nodes:all_running().")
        return sorted(name.strip(" '\n") for name in out.strip().strip("[]").split(",") if name)

    def queues(self, asked: int) -> dict[str, dict[str, Any]]:
        """Every queue by name: its ``type``, ``leader``, ``members`` and ``online``
        members (quorum queues), as node ``asked`` sees them."""
        out = self.ctl(
            asked, "list_queues", "-q", "--formatter", "json", "name", "type", "leader",
            "members", "online",
        )  # fmt: skip
        return {queue["name"]: queue for queue in json.loads(out)}

    def alive(self) -> list[int]:
        return [n for n in NODES if self.pid(n) is not None]


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory) -> Iterator[RabbitCluster]:
    """The 3-node cluster, started once per session, stopped by PID at the end."""
    if not os.path.exists(SERVER) or shutil.which("rabbitmqctl") is None:
        pytest.fail(f"{SERVER} and rabbitmqctl are needed (apt-get install rabbitmq-server)")
    shared = RabbitCluster(SHARED_DIR)
    if shared.alive() == list(NODES):  # `bash .ci/services cluster` started it: reuse it
        yield shared
        return
    if port_open(AMQP_BASE + 1):
        pytest.fail(f"127.0.0.1:{AMQP_BASE + 1} is taken by something else than the cluster")
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    atexit.register(cluster.stop)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)


@pytest.fixture
def all_nodes_running(rabbit_cluster) -> Iterator[RabbitCluster]:
    """The cluster with its 3 nodes running, before the test and after it (a node a
    test killed and did not restart is started again)."""
    yield rabbit_cluster
    for n in NODES:
        if rabbit_cluster.pid(n) is None:
            rabbit_cluster.start_node(n)


def wait_members(cluster: RabbitCluster, queue: str, count: int, asked: int) -> dict[str, Any]:
    """Wait until quorum queue ``queue`` has ``count`` online members; its entry."""
    found: dict[str, Any] = {}

    def online() -> bool:
        found.update(cluster.queues(asked).get(queue, {}))
        return len(found.get("online") or []) == count

    eventually(online, f"{queue}: {count} online members")
    return found


def wait_seconds(seconds: float) -> None:
    """Let the load run for a while (not a measurement)."""
    time.sleep(seconds)
