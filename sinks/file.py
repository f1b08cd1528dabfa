"""The ``file`` sink: every event as one line of JSON, appended to a file, rotated by size
or by time; safe with several processes writing the same path (docs/plugins.md, "The
built-in file sink").

Several processes do write it: ``eventrouter serve`` runs one instance of the sink in
each of its worker processes, and several ``eventrouter worker`` processes may feed one
sink. They share one live file (what ``tail -f`` and log shippers follow), and every
write of a batch holds an exclusive ``flock`` on a lock file beside it (``PATH.lock``):

- the batch's lines go out with ``os.write`` on a descriptor opened ``O_APPEND``,
  repeated until every byte is written, so a batch is contiguous and whole lines only,
  even when one ``write`` call is cut short (POSIX promises nothing about large
  appends from several processes interleaving; the lock does);
- rotation happens under the same lock: the live file is renamed to
  ``STEM.<UTC time>.SUFFIX`` and a new one is created; a process whose descriptor
  still points at the renamed file sees that the path's inode changed and reopens it
  before writing. The time the live file was started is kept in the lock file, so
  ``rotate_every`` counts from the same moment in every process.

One lock per batch, not per event: the framework gives ``write`` whole group commits.
The alternative, one file per process, needs no lock, but leaves readers a set of files
that grows with every worker restart, and rotation to do per file.

Delivery is at least once (:attr:`FileSink.at_least_once`): a batch the framework
retries after a failed write, or the broker redelivers, is appended again. Readers drop
duplicates by ``message_id``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec

from eventrouter.bus.hookspecs import hookimpl
from eventrouter.bus.sink import Sink
from eventrouter.config import Duration
from eventrouter.events.commands import Command
from eventrouter.files import PRIVATE_FILE, private_dir
from eventrouter.health import ComponentHealth

_encode = msgspec.json.Encoder().encode
_LS, _PS = "\u2028".encode(), "\u2029".encode()


class FileOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: The live file, e.g. ``/var/log/eventrouter/events.jsonl``; its directory is
    #: created (0700) when missing.
    path: Annotated[str, msgspec.Meta(min_length=1)]
    #: Rotate once the live file holds at least this many bytes (checked before each
    #: batch, so a file ends at the first batch that crosses it). None: never by size.
    rotate_bytes: Annotated[int, msgspec.Meta(gt=0)] | None = None
    #: Rotate once the live file was started this long ago (``"1h"``, ``"1d"``), at the
    #: next batch. None: never by time.
    rotate_every: Duration | None = None
    #: ``fsync`` after each batch, so an acknowledged event survives a power cut.
    fsync: bool = True


def rotated_name(path: Path, now: float) -> Path:
    """``events.jsonl`` -> ``events.2025-05-28T04-17-35.123456Z.jsonl`` (sortable, no
    colons for other systems' file names); ``-1``, ``-2``... if taken."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H-%M-%S.%fZ")
    stem, suffix = path.stem, path.suffix
    candidate = path.with_name(f"{stem}.{stamp}{suffix}")
    n = 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}.{stamp}-{n}{suffix}")
    return candidate


class FileSink(Sink):
    """JSON lines in one live file shared by every process (module docstring)."""

    Options = FileOptions
    #: Append-only: a redelivered batch is stored again (docs/plugins.md).
    at_least_once = True
    #: Writes are serialised by the lock anyway: take a writer thread on the edge.
    dedicated_writer = True

    def __init__(self, name: str, config: Any, options: FileOptions) -> None:
        super().__init__(name, config, options)
        self.path = Path(options.path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.written = 0
        self.rotations = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, bus: Any = None) -> None:
        with self._lock:
            if self._fd is not None:
                return  # started already
            private_dir(self.path.parent, own=False)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
            self._fd = self._open_live()

    def stop(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None

    def _open_live(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)

    # -- writing -----------------------------------------------------------------------
    def write(self, commands: Sequence[Command]) -> None:
        data = b"".join([_encode(command.row()) + b"\n" for command in commands])
        # JSON allows U+2028/U+2029 raw inside strings, but Python's splitlines() and
        # older JavaScript split lines there: write them escaped, as the same JSON.
        if _LS in data or _PS in data:
            data = data.replace(_LS, b"\\u2028").replace(_PS, b"\\u2029")
        with self._lock:
            if self._fd is None:
                raise RuntimeError(f"file sink {self.name!r} is not started")
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._follow_rotation()
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                if self.options.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self.written += len(commands)

    def _follow_rotation(self) -> None:
        """Under the flock: reopen if another process rotated the file (or it was
        removed), then rotate if it is due."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != os.fstat(self._fd).st_ino:
            os.close(self._fd)
            self._fd = self._open_live()
            current = os.fstat(self._fd)
        now = time.time()
        started = self._started_at(now)
        options = self.options
        due = (options.rotate_bytes is not None and current.st_size >= options.rotate_bytes) or (
            options.rotate_every is not None and now - started >= options.rotate_every
        )
        if due and current.st_size > 0:
            os.rename(self.path, rotated_name(self.path, now))
            os.close(self._fd)
            self._fd = self._open_live()
            self._set_started_at(now)
            self.rotations += 1

    def _started_at(self, now: float) -> float:
        """When the live file was started, from the lock file (set now if unknown)."""
        raw = os.pread(self._lock_fd, 64, 0)
        try:
            return float(raw.decode().strip())
        except ValueError:
            self._set_started_at(now)
            return now

    def _set_started_at(self, now: float) -> None:
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{now:.6f}\n".encode(), 0)

    def health(self) -> ComponentHealth:
        running = self._fd is not None
        return ComponentHealth(
            name=f"sink:{self.name}",
            up=running and os.access(self.path.parent, os.W_OK),
            required=self.config.acknowledgements,
            detail=(f"last error: {self.last_error}" if self.last_error else "")
            if running
            else "not started",
            stats={"written": self.written, "rotations": self.rotations},
        )


@hookimpl
def eventrouter_sink_types() -> dict[str, type[Sink]]:
    return {"file": FileSink}
