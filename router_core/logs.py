"""Logging: plain text for people, or one JSON object per line for log pipelines, and the
id of the request each line was written for.

``[server] log_format = "json"`` (or ``EVENTROUTER_LOG_FORMAT=json``) switches every
process (``serve`` with its gunicorn workers, ``worker``) to JSON lines:
``{"time", "level", "logger", "message", "request_id"?, "process", "exception"?}``.
Every HTTP request has an id: the client's ``X-Request-ID`` when it is a sane token, else
a new one. It is echoed in the response's ``X-Request-ID`` and carried by every line
logged while the request is handled (threads started with ``asyncio.to_thread`` too).
"""

from __future__ import annotations

import logging
import os
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec

from eventrouter.events.ids import new_hex_id

REQUEST_ID_HEADER = "X-Request-ID"
FORMAT_ENV = "EVENTROUTER_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
request_id: ContextVar[str | None] = ContextVar("eventrouter_request_id", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_encoder = msgspec.json.Encoder()


def new_request_id(sent: str | None) -> str:
    """The client's id when it is a sane token (a proxy's or load balancer's), else ours."""
    if sent and _SANE_ID.match(sent):
        return sent
    return new_hex_id()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def chosen_format(configured: str = "text") -> str:
    """The environment overrides the config file (as for the other EVENTROUTER_* names)."""
    value = os.environ.get(FORMAT_ENV) or configured
    return value if value in ("text", "json") else "text"


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route the root logger's records through one stderr handler in ``log_format``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level)


def gunicorn_logconfig(log_format: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its own error log (and uvicorn's, in the workers)
    in the same format as ours."""
    formatter_spec: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"eventrouter": formatter_spec},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "eventrouter",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "uvicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }
