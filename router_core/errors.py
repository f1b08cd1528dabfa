"""Client-facing errors: every one renders as JSON ``{"code": ..., "message": ...}``."""

from __future__ import annotations

import re

import msgspec


class APIError(Exception):
    """An error answered to the client with ``status`` and a JSON body naming the problem."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}
        #: Set once the events this error rejects are counted in the metrics.
        self.counted = False

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, **self.extra}


class InvalidEvent(APIError):
    """One event failed validation (400); in a batch it rejects only that item."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(status, code, message)


_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")


def from_validation_error(exc: msgspec.MsgspecError, prefix: str = "") -> InvalidEvent:
    """Turn a msgspec decode/validation error into a 400 that names the field.

    msgspec reports ``Expected `str`, got `int` - at `$.event``; we keep its wording and
    expose the path, e.g. ``invalid_field: event: Expected `str`, got `int```.
    """
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return InvalidEvent("invalid_json", f"Body is not valid JSON: {text}")
    missing = _MISSING.search(text)
    match = _PATH.search(text)
    path = match.group("path") if match else ""
    detail = _PATH.sub("", text)
    if missing:
        field = missing.group("field")
        where = f"{prefix}{path}.{field}" if path else f"{prefix}{field}"
        if field == "type":
            return InvalidEvent("missing_field", f"{where}: required field is missing")
        return InvalidEvent("missing_field", f"{where}: required field is missing")
    where = f"{prefix}{path}" if path else (prefix.rstrip(".") or "body")
    if "RFC3339" in detail:
        return InvalidEvent("invalid_timestamp", f"{where}: not an ISO 8601 timestamp")
    if "Invalid value" in detail and path.endswith("type"):
        return InvalidEvent("invalid_type", f"{where}: {detail}")
    if "length" in detail:
        return InvalidEvent("invalid_field", f"{where}: {detail}")
    return InvalidEvent("invalid_field", f"{where}: {detail}")


def own_copy(exc: BaseException) -> BaseException:
    """``exc`` again, as an object of its own: one exception object raised in many tasks
    would collect every task's traceback. Made without calling ``__init__`` (whose
    arguments are unknown here); an exception type that cannot be made so is shared."""
    try:
        clone = type(exc).__new__(type(exc))
        clone.__dict__.update(exc.__dict__)
    except Exception:
        return exc
    clone.args = exc.args
    clone.__cause__, clone.__context__ = exc.__cause__, exc.__context__
    clone.__suppress_context__ = exc.__suppress_context__
    return clone
