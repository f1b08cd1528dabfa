"""Running the app under gunicorn with uvicorn workers on uvloop and httptools.

:func:`gunicorn_options` holds the production settings; ``GUNICORN_CMD_ARGS`` overrides
any of them, as it does for gunicorn's own command (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import multiprocessing
import sys
import weakref
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn_worker import UvicornWorker

from eventrouter import logs
from eventrouter.config import Config, parse_bind
from eventrouter.edge.fastpath import FastIngest

#: The worker's cyclic-GC thresholds: a young collection every 10,000 net allocations
#: of container objects (CPython's default: 700), the older generations as by default.
GC_THRESHOLD = (10_000, 10, 10)


class _HeldHead:
    """Stands in for the transport between a response's start and its first body
    message: the first write (the status line and headers) is held, the next one goes
    out joined to it, in one ``transport.write``. Anything else reaches the transport."""

    __slots__ = ("head", "joined", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self.joined = False

    def write(self, data: bytes) -> None:
        if self.joined:
            self.transport.write(data)
        elif self.head is None:
            self.head = data
        else:
            self.joined = True
            self.transport.write(self.head + data)
            self.head = None

    def release(self) -> asyncio.Transport:
        """Write a head still held (a HEAD request's, an error's) and step aside."""
        if self.head is not None:
            self.joined = True
            self.transport.write(self.head)
            self.head = None
        return self.transport

    def close(self) -> None:
        self.release().close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class CoalescingCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, except that a response of known length
    (``content-length`` set, as Falcon sets it for ``resp.data``/``resp.text``) goes out
    in one ``transport.write``: status line, headers and the first body message together.

    uvicorn writes the head on ``http.response.start`` and the body on
    ``http.response.body``: two sends, two syscalls and two TCP segments per response,
    which took 28 % of the edge's GIL samples under single-event load (bench/README.md,
    "Where the edge's time goes"). A chunked response (no ``content-length``: a stream,
    server-sent events) is written as before, its head at once, so a stream whose first
    chunk comes late still shows its status. A fixed-length stream (a static file) sends
    its head with its first chunk.
    """

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            if not self.response_started and _fixed_length(message.get("headers", ())):
                self.transport = _HeldHead(self.transport)
            await super().send(message)
            return
        held = self.transport if type(self.transport) is _HeldHead else None
        try:
            await super().send(message)
        finally:
            if held is not None:
                self.transport = held.release()


def _fixed_length(headers: Any) -> bool:
    for name, _ in headers:  # noqa: SIM110 - a plain loop: any(generator) costs more here
        if name.lower() == b"content-length":
            return True
    return False


#: Each app's fast path (None: not taken), worked out at its first request.
_FAST_PATHS: weakref.WeakKeyDictionary[Any, FastIngest | None] = weakref.WeakKeyDictionary()


def fast_path_of(app: Any) -> FastIngest | None:
    """The ingestion fast path of the ASGI app uvicorn runs, or None when it is not
    ours (or uvicorn wraps it: its trace logging sees every request) or may not take
    it (:meth:`FastIngest.for_app`)."""
    if not hasattr(app, "ingestion_routes"):
        return None
    try:
        return _FAST_PATHS[app]
    except KeyError:
        fast = _FAST_PATHS[app] = FastIngest.for_app(app)
        return fast


class DrainingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that a shutdown does not drop a connection
    whose first request has not fully arrived yet.

    A worker stops (SIGTERM, or recycled after ``max_requests``) some time after it last
    accepted a connection: uvicorn notices the request limit on a 0.1 s tick, and the
    listening socket stays open until then. uvicorn's shutdown closes every connection
    with no request in progress, including one the worker accepted a moment ago whose
    client is still sending its first request: the client sees a reset for a request
    no one read (about 1 in 75 new connections while workers recycle every 5 requests;
    ``tests/integration/test_serve.py``). A client does not retry a request on a new connection, so
    an SDK without retries loses the event.

    Here such a connection gets ``timeout_keep_alive`` seconds to deliver the request,
    which is then served with ``Connection: close``; the worker exits once it is answered
    (or the time is up). An idle keep-alive connection that has already been answered is
    closed as before: HTTP clients expect that, and retry on a fresh connection.
    """

    _served = False  #: a response has completed on this connection
    _receiving = False  #: a request has begun to arrive and its headers have not ended
    _draining: asyncio.TimerHandle | None = None

    def on_message_begin(self) -> None:
        self._receiving = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._receiving = False
        super().on_headers_complete()
        if type(self.cycle) is RequestResponseCycle:
            # uvicorn builds its own class here (and has not run it yet: its task starts
            # on the next loop turn, a pipelined one later still): ours writes each
            # response of known length in one send.
            self.cycle.__class__ = CoalescingCycle
        if self._draining is not None and self.cycle is not None:
            self._draining.cancel()
            self.cycle.keep_alive = False  # answered, then closed

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Start answering a request: an ingestion ``POST`` on the fast path
        (:mod:`eventrouter.edge.fastpath`), anything else through the app as uvicorn
        does."""
        fast = fast_path_of(app)
        handle = fast.handler(cycle.scope) if fast is not None else None
        if handle is None:
            super()._start_asgi_task(cycle, app)
            return
        context = contextvars.Context() if self.config.reset_contextvars else None
        task = self.loop.create_task(fast.serve(cycle, handle), context=context)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        self._served = True
        super().on_response_complete()

    def shutdown(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and (self._receiving or not self._served):
            self._draining = self.loop.call_later(self.timeout_keep_alive, self._give_up)
        else:
            super().shutdown()

    def _give_up(self) -> None:
        """No complete request arrived while draining: close as uvicorn would have."""
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._draining is not None:
            self._draining.cancel()
        super().connection_lost(exc)


class UvloopWorker(UvicornWorker):
    """uvicorn's gunicorn worker, pinned to uvloop and httptools (with
    :class:`DrainingHttpProtocol`) and lifespan on, so a sink that cannot start stops
    the worker instead of serving without a store.

    uvicorn's own X-Forwarded-For handling is off: it trusts loopback peers by default,
    which would let any local client choose its ``context.ip``. The app applies
    ``server.trusted_proxies`` itself.
    """

    CONFIG_KWARGS = {
        "loop": "uvloop",
        "http": DrainingHttpProtocol,
        "lifespan": "on",
        "proxy_headers": False,
    }

    def init_process(self) -> None:
        # A request's objects are freed by reference counting as it completes; the
        # cyclic collector only ran because CPython counts allocations: at the default
        # 700 it collected about once every 10 requests for nothing (3 µs a request,
        # bench/edge_costs.py). The app freezes what start-up allocated (app.Lifespan).
        gc.set_threshold(*GC_THRESHOLD)
        super().init_process()


WORKER_CLASS = f"{UvloopWorker.__module__}.{UvloopWorker.__qualname__}"


def default_workers() -> int:
    return max(1, multiprocessing.cpu_count())


class HaltingArbiter(Arbiter):
    """gunicorn's arbiter, except that a second worker failing to boot while the
    arbiter is already halting for the first does not escape as a traceback.

    With several workers and a sink that cannot start, every worker exits with
    ``WORKER_BOOT_ERROR``. gunicorn halts on the first; its ``stop()`` then reaps the
    others, and ``reap_workers`` raises ``HaltServer`` again for the next one, out of
    ``halt()`` and past the main loop's handler: the operator saw a gunicorn traceback
    instead of the one line naming the sink (docs/plugins.md, "When a plugin cannot
    start"), and the rest of ``halt()`` (pidfile, ``on_exit``) was skipped. While
    halting, the reason is already chosen; the other workers are reaped and the halt
    goes on.
    """

    halting = False

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.halting = True
        super().halt(reason, exit_status)

    def reap_workers(self) -> None:
        while True:
            try:
                super().reap_workers()
            except HaltServer:
                if not self.halting:
                    raise
                continue  # that worker is popped; reap the rest
            return


class Server(BaseApplication):
    """gunicorn's arbiter serving ``create_app(config)`` in each worker (built after
    the fork, so each process opens its own connections and writer threads)."""

    def __init__(self, config: Config, options: dict[str, Any]) -> None:
        self.app_config = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn are skipped
                self.cfg.set(key, value)
        # Then the operator's overrides, as gunicorn's own command reads them:
        # GUNICORN_CMD_ARGS="--max-requests 100000 --graceful-timeout 60" (any setting).
        overrides = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
        for key, value in vars(overrides).items():
            if value is not None and key != "args":
                self.cfg.set(key.lower(), value)

    def run(self) -> None:
        # BaseApplication.run, with our arbiter.
        try:
            HaltingArbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)

    def load(self) -> Any:
        from eventrouter.app import create_app

        return create_app(self.app_config)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_options(config: Config, *, workers: int | None = None) -> dict[str, Any]:
    server = config.server
    bind = [_address(server.host, server.port)]
    if server.metrics_bind:
        # Every worker accepts on both; the app serves only /metrics on this one
        # (eventrouter.app.MetricsListener), and /metrics only here.
        bind.append(_address(*parse_bind(server.metrics_bind)))
    return {
        "bind": bind,
        "workers": workers or server.workers or default_workers(),
        "worker_class": WORKER_CLASS,
        # SIGTERM: stop accepting, finish in-flight requests (their commits), then exit.
        "graceful_timeout": 30,
        # Recycle each worker after about a million requests (a slow leak in a plugin
        # cannot grow forever); the jitter keeps the workers from restarting together.
        "max_requests": 1_000_000,
        "max_requests_jitter": 100_000,
        "timeout": 60,
        "keepalive": 5,
        "backlog": 2048,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "logconfig_dict": logs.gunicorn_logconfig(logs.chosen_format(server.log_format)),
        "proc_name": "eventrouter",
        # gunicorn >= 24 opens a control socket at a fixed path under $HOME; several
        # servers on one machine (tests, benchmarks) would fight over it.
        "control_socket_disable": True,
        # A dead worker's metric files stop counting as live (multiprocess mode).
        "child_exit": _child_exit,
    }


def _child_exit(server: Any, worker: Any) -> None:
    from eventrouter import metrics

    metrics.mark_process_dead(worker.pid)
