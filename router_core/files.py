"""What eventrouter keeps on disk is readable by its own user only, whatever the umask.

Directories it creates are ``0700`` and files ``0600``: the SQLite database (SQLite gives
its ``-wal`` and ``-shm`` files the database file's mode), its lock file, the spool's
segments and locks, and the metrics directory of ``serve``. The mode is set explicitly,
not left to the umask: a umask of ``000`` would otherwise make them world-readable.

Files and directories that already exist are tightened when they are eventrouter's
own: a file it writes (the database and its companions, which may be left over from a
version that did not set modes), the data directory (``EVENTROUTER_DATA_DIR``), the
spool directory and the metrics directory. Each change is logged once as a warning
naming the path and the old mode. A directory the operator chose for something else (the
parent of an SQLite file outside the data directory, such as ``/srv``) is created
``0700`` when missing and otherwise left as it is: its files are ``0600`` anyway.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

from eventrouter.config import DEFAULT_DATA_DIR, ENV_DATA_DIR

log = logging.getLogger("eventrouter.files")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: SQLite's companions of a database file.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal", ".lock")


def data_dir() -> Path:
    """``EVENTROUTER_DATA_DIR``, default ``./eventrouter-data``."""
    return Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)


def _tighten(path: Path, mode: int, what: str) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & ~mode == 0:
        return
    try:
        os.chmod(path, current & mode)
    except OSError as exc:  # not ours to change: say so, carry on
        log.warning("%s %s is mode %04o and could not be tightened: %s", what, path, current, exc)
        return
    log.warning("%s %s was mode %04o: tightened to %04o", what, path, current, current & mode)


def private_dir(path: Path, *, own: bool = True) -> Path:
    """Create ``path`` (and missing parents) with the leaf ``0700``. An existing one is
    tightened to ``0700`` when ``own`` (a directory only eventrouter uses)."""
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True)
    except FileExistsError:
        if own:
            _tighten(path, PRIVATE_DIR, "directory")
        return path
    os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists with mode ``0600`` (created so, or tightened)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE)
    except FileExistsError:
        _tighten(path, PRIVATE_FILE, "file")
        return path
    try:
        os.fchmod(fd, PRIVATE_FILE)  # O_CREAT's mode is filtered by the umask too
    finally:
        os.close(fd)
    return path


def open_private(path: Path, mode: str = "ab") -> BinaryIO:
    """``open(path, mode)`` (binary, for writing), the file created ``0600`` if missing;
    the caller closes it."""
    private_file(path)
    return open(path, mode)


def is_data_dir(path: Path) -> bool:
    try:
        return path.resolve() == data_dir().resolve()
    except OSError:
        return False


def private_sqlite(database: Path) -> None:
    """Before SQLite opens ``database``: its directory ``0700`` when created (or when it
    is the data directory), the file ``0600`` (SQLite then creates ``-wal`` and ``-shm``
    with that same mode), and any companion files left from before tightened."""
    private_dir(database.parent, own=is_data_dir(database.parent))
    private_file(database)
    for suffix in SQLITE_COMPANIONS:
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            _tighten(companion, PRIVATE_FILE, "file")
