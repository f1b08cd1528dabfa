"""``eventrouter upload FILE``: send an NDJSON or JSON file of events through the client.

NDJSON (one JSON object per line, blank lines skipped) is read as a stream, so the file
may be larger than memory; its rejections are reported by 1-based line number. A JSON
file (a top-level array, or ``{"batch": [...]}``) is read whole and reported by array
index. Exit codes: 0 all accepted, 1 some rejected, 2 usage/config error (unreadable
file, writeKey refused), 3 server unreachable after retries.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO

import msgspec

from eventrouter.client.client import (
    MAX_BATCH_EVENTS,
    AuthenticationError,
    Client,
    Rejection,
    ServerUnavailable,
    UploadResult,
)

_decode = msgspec.json.decode


class FileError(Exception):
    """The file cannot be read as events at all."""


class EventFile:
    """The events of one file, yielded in order; what could not even be parsed is kept
    in ``problems`` (by input position) and ``positions`` maps each yielded event to
    its line number (NDJSON) or array index (JSON)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.json = _is_json(path)
        self.unit = "item" if self.json else "line"
        self.positions: list[int] = []
        self.problems: list[tuple[int, str, str]] = []

    def total(self) -> int | None:
        """How many lines the progress bar will see (NDJSON only; a quick pass)."""
        if self.json:
            return None
        count, last = 0, b"\n"
        with self.path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                count += chunk.count(b"\n")
                last = chunk[-1:]
        return count + (last != b"\n")  # a last line without its newline

    def events(self) -> Iterator[dict[str, Any]]:
        items = self._json_items() if self.json else self._ndjson_items()
        for position, item in items:
            if isinstance(item, dict):
                self.positions.append(position)
                yield item
            else:
                kind = "array" if isinstance(item, list) else type(item).__name__
                kind = {"str": "string", "NoneType": "null", "int": "number"}.get(kind, kind)
                self.problems.append(
                    (position, "not_an_object", f"expected a JSON object, got {kind}")
                )

    def _ndjson_items(self) -> Iterator[tuple[int, Any]]:
        with self.path.open("rb") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    yield number, _decode(line)
                except msgspec.DecodeError as exc:
                    self.problems.append((number, "invalid_json", f"not valid JSON: {exc}"))

    def _json_items(self) -> Iterator[tuple[int, Any]]:
        try:
            document = _decode(self.path.read_bytes())
        except msgspec.DecodeError as exc:
            raise FileError(f"{self.path}: not valid JSON: {exc}") from None
        if isinstance(document, dict) and isinstance(document.get("batch"), list):
            document = document["batch"]
        if not isinstance(document, list):
            raise FileError(f'{self.path}: expected a JSON array of events or {{"batch": [...]}}')
        yield from enumerate(document)


_JSON_HEAD = re.compile(rb'\s*(\[|\{\s*"batch"\s*:)')


def _is_json(path: Path) -> bool:
    """A ``.json`` file, or any file that opens with an array or ``{"batch":``."""
    if path.suffix.lower() == ".json":
        return True
    with path.open("rb") as file:
        return _JSON_HEAD.match(file.read(4096)) is not None


def run(args: argparse.Namespace) -> int:
    # The CLI logs at INFO; a line per request from httpx would drown the summary.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    path = Path(args.file)
    write_key = args.write_key or os.environ.get("EVENTROUTER_WRITE_KEY") or None
    try:
        source = EventFile(path)
        total = source.total() if _show_progress(args) else None
    except OSError as exc:
        print(f"eventrouter: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        client = Client(
            args.host, write_key, batch_events=args.batch_events, max_retries=args.retries
        )
    except ValueError as exc:
        print(f"eventrouter: {exc}", file=sys.stderr)
        return 2
    bar = _progress_bar(args, total, source.unit)
    skipped = 0

    def advance(settled: int) -> None:
        nonlocal skipped  # lines skipped as unparseable advance the bar too
        if bar is not None:
            bar.update(settled + len(source.problems) - skipped)
            skipped = len(source.problems)

    try:
        with client, bar or nullcontext():
            result = client.upload(source.events(), progress=advance)
    except FileError as exc:
        print(f"eventrouter: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eventrouter: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except (AuthenticationError, ServerUnavailable) as exc:
        _summary(source, exc.result, sys.stderr)
        print(f"eventrouter: {exc}", file=sys.stderr)
        where = source.positions[exc.index]
        print(
            f"eventrouter: stopped: nothing from {source.unit} {where} on was sent", file=sys.stderr
        )
        return 2 if isinstance(exc, AuthenticationError) else 3
    rejected = _summary(source, result, sys.stdout)
    return 1 if rejected else 0


def _summary(source: EventFile, result: UploadResult, out: TextIO) -> int:
    """Print accepted/rejected counts and each rejection by its place in the file;
    return the number rejected."""
    rows = [(position, code, message) for position, code, message in source.problems]
    rows += [_locate(source, r) for r in result.rejections]
    rows.sort()
    print(f"accepted: {result.accepted}", file=out)
    print(f"rejected: {len(rows)}", file=out)
    for position, code, message in rows:
        print(f"  {source.unit} {position}: {code}: {message}", file=out)
    return len(rows)


def _locate(source: EventFile, rejection: Rejection) -> tuple[int, str, str]:
    return source.positions[rejection.index], rejection.code, rejection.message


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _progress_bar(args: argparse.Namespace, total: int | None, unit: str) -> Any:
    if not _show_progress(args):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr)


def add_parser(commands: Any) -> None:
    """The ``upload`` subcommand, added to the CLI's subparsers."""
    upload = commands.add_parser("upload", help="send an NDJSON or JSON file of events")
    upload.add_argument("file", help="NDJSON (one event per line) or JSON (an array)")
    upload.add_argument("--host", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    upload.add_argument("--write-key", help="source writeKey (default: $EVENTROUTER_WRITE_KEY)")
    upload.add_argument(
        "--batch-events",
        type=_batch_events,
        default=MAX_BATCH_EVENTS,
        metavar="N",
        help=f"events per request, 1 to {MAX_BATCH_EVENTS} (default: {MAX_BATCH_EVENTS})",
    )
    upload.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="retries of a batch on connection errors, 429 and 5xx (default: 5)",
    )
    upload.add_argument("--no-progress", action="store_true", help="no progress bar")
    upload.set_defaults(func=run)


def _batch_events(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 1 <= number <= MAX_BATCH_EVENTS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_BATCH_EVENTS}")
    return number
