"""The edge's local spool: where accepted events wait while the broker is unreachable.

With ``[queue]`` configured, a ``200`` means the broker confirmed the events. When it
cannot (RabbitMQ down, unreachable, not confirming in time), the queue publisher
(``sinks/queue.py``) appends the group of events to this spool instead, fsyncs it, and
only then answers ``200``; a background thread publishes the spool back to the broker,
oldest first, once it answers again. A full spool answers ``503`` with ``Retry-After``:
there is never a ``200`` for an event that is neither in the broker nor on this disk.

Layout, under ``[queue.spool] dir`` (default ``$EVENTROUTER_DATA_DIR/spool``)::

    {host}-{pid}-{random}/      one directory per process (each gunicorn worker)
        lock                    flock'ed by its owner for as long as it runs
        0000000001.seg          segments, appended in order, replayed in order
        0000000002.seg

A segment is a run of records: a 12-byte header (payload length, CRC-32 of the
payload, event count; big-endian unsigned) and the payload, one message body exactly as
the publisher would have sent it (``eventrouter.queue.broker`` format ``commands/2``;
a spool written by the previous release holds ``commands/1`` bodies, read as such). A
record is fsynced before its requests are answered. A torn record at a segment's end
(the process died while writing it) was never acknowledged: the reader stops there.

A process replays its own directory. The directory of a process that died (its
``lock`` can be taken) is an orphan: any process of any later run on the same spool
directory takes its lock, replays it in order and removes it. Replay is at least once:
a record is published, then the segment is removed once every record of it was
confirmed, so a crash in between publishes some events a second time; dedup and the
stores' ``message_id`` keys remove those copies (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from eventrouter.files import PRIVATE_DIR, open_private, private_dir

log = logging.getLogger("eventrouter.spool")

HEADER = struct.Struct(">III")
SEGMENT_SUFFIX = ".seg"
#: A segment is sealed (and a new one begun) past this size, so replay can remove the
#: sealed ones while appends go on.
SEGMENT_BYTES = 8 * 1024 * 1024

#: ``publish(count, payload)``: send one record to the broker; raise if it did not take it.
Publish = Callable[[int, bytes], None]


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` already: the request must be retried later."""

    #: Its message is quoted in the 503 (eventrouter.bus.bus.NotDurable): it names no secret.
    client_safe = True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if missing), or None if held."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except FileNotFoundError:  # its directory is being removed
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask
    return fd


def read_records(path: Path, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """``(end offset, event count, payload)`` of each whole record from ``offset``; stops
    at a torn or corrupt record (never acknowledged: see the module docstring)."""
    with path.open("rb") as file:
        file.seek(offset)
        while True:
            header = file.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            length, crc, count = HEADER.unpack(header)
            payload = file.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                log.warning("spool %s: torn record at byte %d ignored", path, offset)
                return
            offset += HEADER.size + length
            yield offset, count, payload


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + SEGMENT_SUFFIX))


class Spool:
    """One process's spool directory: appends from the publisher threads, replay from
    one replay thread (:meth:`replay`), counters for ``/health`` and ``/metrics``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # 0700, and 0600 segments and locks, whatever the umask (eventrouter.files).
        private_dir(root)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        # Made and locked under a hidden name, then renamed: another process's orphan
        # scan never sees it unlocked.
        making = root / f".{name}"
        making.mkdir(mode=PRIVATE_DIR)
        os.chmod(making, PRIVATE_DIR)
        self._lock_fd = _try_lock(making / "lock")
        self.directory = root / name
        making.rename(self.directory)
        _fsync_dir(root)
        self._mutex = threading.Lock()
        self._file = None  # the open segment appends go to
        self._sequence = 0
        #: Progress of the replay through the oldest segment (publish failed midway).
        self._replayed_to: dict[Path, int] = {}
        #: Bytes and events on disk in this process's directory (pending replay).
        self.bytes = 0
        self.events = 0
        #: Totals since start: events appended, events published back, appends refused.
        self.spooled_events = 0
        self.replayed_events = 0
        self.refused_events = 0
        #: Events found in dead processes' directories and published back.
        self.adopted_events = 0
        #: An append was refused and nothing was replayed since.
        self.full = False

    # -- appending (publisher threads) -------------------------------------------------
    @property
    def empty(self) -> bool:
        return self.events == 0

    def append(self, count: int, payload: bytes) -> None:
        """Write one record and fsync it; :class:`SpoolFull` if it does not fit."""
        record = HEADER.pack(len(payload), zlib.crc32(payload), count) + payload
        with self._mutex:
            if self.bytes + len(record) > self.max_bytes:
                self.full = True
                self.refused_events += count
                raise SpoolFull(
                    f"the local spool is full ({self.bytes} of {self.max_bytes} bytes) "
                    "while the broker is unreachable"
                )
            if self._file is None or self._file.tell() >= SEGMENT_BYTES:
                self._open_segment()
            position = self._file.tell()
            try:
                self._file.write(record)
                self._file.flush()
                os.fsync(self._file.fileno())
            except BaseException:  # disk full: no torn record before the next append
                with contextlib.suppress(OSError):
                    self._file.truncate(position)
                    self._file.seek(position)
                raise
            self.bytes += len(record)
            self.events += count
            self.spooled_events += count

    def _open_segment(self) -> None:
        if self._file is not None:
            self._file.close()
        self._sequence += 1
        path = self.directory / f"{self._sequence:010d}{SEGMENT_SUFFIX}"
        self._file = open_private(path, "ab")
        _fsync_dir(self.directory)

    def _seal(self) -> list[Path]:
        """Close the open segment (the next append begins another) and list them all."""
        with self._mutex:
            if self._file is not None:
                self._file.close()
                self._file = None
            return _segments(self.directory)

    # -- replay (one thread) -----------------------------------------------------------
    def replay(self, publish: Publish) -> int:
        """Publish every record of this process's sealed segments, oldest first, then
        those of dead processes; events published. Stops at the first failure (raised),
        keeping its place."""
        done = 0
        for segment in self._seal():
            done += self._replay_segment(segment, publish, own=True)
        for orphan in self.orphans():
            done += self._adopt(orphan, publish)
        return done

    def _replay_segment(self, segment: Path, publish: Publish, *, own: bool) -> int:
        start = self._replayed_to.get(segment, 0)
        done = 0
        for end, count, payload in read_records(segment, start):
            publish(count, payload)
            self._replayed_to[segment] = end
            done += count
            if own:
                with self._mutex:
                    self.bytes -= end - start
                    self.events -= count
                    self.replayed_events += count
                    self.full = False
            start = end
        segment.unlink()
        self._replayed_to.pop(segment, None)
        _fsync_dir(segment.parent)
        return done

    def orphans(self) -> list[Path]:
        """Spool directories of processes that are gone (their lock is free)."""
        found = []
        for directory in sorted(self.root.iterdir()):
            hidden = directory.name.startswith(".")
            if hidden or directory == self.directory or not directory.is_dir():
                continue
            fd = _try_lock(directory / "lock")
            if fd is not None:
                os.close(fd)
                found.append(directory)
        return found

    def _adopt(self, directory: Path, publish: Publish) -> int:
        """Replay a dead process's directory under its lock, then remove it."""
        fd = _try_lock(directory / "lock")
        if fd is None:  # another process adopted it first
            return 0
        done = 0
        try:
            for segment in _segments(directory):
                count = self._replay_segment(segment, publish, own=False)
                done += count
                self.adopted_events += count
            (directory / "lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a stray file: keep the directory
                directory.rmdir()
            _fsync_dir(self.root)
        finally:
            os.close(fd)
        if done:
            log.info("replayed %d events spooled by a process that is gone (%s)", done, directory)
        return done

    def orphan_bytes(self) -> int:
        """Bytes in dead processes' directories, not yet adopted (for ``/health``)."""
        size = 0
        for directory in self.orphans():
            for segment in _segments(directory):
                with contextlib.suppress(FileNotFoundError):  # adopted meanwhile
                    size += segment.stat().st_size
        return size

    def close(self) -> None:
        """At stop: close the open segment and release the lock. What is still spooled
        stays on disk for the next process on this directory to replay."""
        with self._mutex:
            if self._file is not None:
                self._file.close()
                self._file = None
        if self.empty:
            for leftover in _segments(self.directory):  # sealed but empty, or torn
                leftover.unlink()
            (self.directory / "lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        elif self.events:
            log.warning(
                "stopping with %d events in the spool %s: the next process on %s replays them",
                self.events,
                self.directory,
                self.root,
            )
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
