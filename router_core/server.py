"""Running the app under gunicorn with uvicorn workers on uvloop and httptools.

:func:`gunicorn_options` holds the production settings; ``GUNICORN_CMD_ARGS`` overrides
any of them, as it does for gunicorn's own command (docs/architecture.md).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from router_core import logs
from router_core.config import Config


class UvloopWorker(UvicornWorker):
    """uvicorn's gunicorn worker, pinned to uvloop and httptools with lifespan on, so a
    sink that cannot start stops the worker instead of serving without a store.

    uvicorn's own X-Forwarded-For handling is off: it trusts loopback peers by default,
    which would let any local client choose its ``context.ip``. The app applies
    ``server.trusted_proxies`` itself.
    """

    CONFIG_KWARGS = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "proxy_headers": False,
    }


WORKER_CLASS = f"{UvloopWorker.__module__}.{UvloopWorker.__qualname__}"


def default_workers() -> int:
    return max(1, multiprocessing.cpu_count())


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

    def load(self) -> Any:
        from router_core.app import create_app

        return create_app(self.app_config)


def gunicorn_options(config: Config, *, workers: int | None = None) -> dict[str, Any]:
    server = config.server
    return {
        "bind": f"[{server.host}]:{server.port}"
        if ":" in server.host
        else f"{server.host}:{server.port}",
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
    from router_core import metrics

    metrics.mark_process_dead(worker.pid)
