"""One process holds an SQLite store: a ``flock`` on ``<file>.lock`` beside the database
file, the real one when its path is a symlink (``real_file``): SQLite follows the link,
so two paths to one file are one store.

A store opened for writing (a server, ``cleanup``, the destination of a migrate) takes
the lock exclusively and writes its pid into the file; a store opened read-only (``ls``,
``show``, the source of a migrate) takes it shared, so several readers may look at a
file no server holds. Either way a second opener learns at once, in one line, who holds
it. flock locks belong to an open file description and go away with the process, so a
killed server never leaves a stale lock behind. (SQLite's own locks could not say this:
they are per connection, and WAL mode lets any number of processes write in turn.)
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..base import StorageError, StorageLocked


def real_file(database: Path) -> Path:
    """The file SQLite opens for ``database`` (its journal and WAL beside it): symlinks
    followed. Never raises (a loop stays unresolved: the open says what is wrong)."""
    return Path(os.path.realpath(database))


def lock_path(database: Path) -> Path:
    real = real_file(database)
    return real.with_name(real.name + ".lock")


class StoreLock:
    """The lock of one database file; :meth:`acquire` raises :class:`StorageLocked`."""

    def __init__(self, database: Path, exclusive: bool) -> None:
        self.database = database
        self.path = lock_path(database)
        self.exclusive = exclusive
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if self.exclusive or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise StorageError(f"cannot lock SQLite store {self.database}: {exc}") from exc
            # A reader in a directory it may not write to (a mounted backup): no server
            # can run there either (SQLite's WAL needs the directory), so the lock file
            # is taken if it exists, and not needed if it does not.
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            reason = self._holder(fd)
            os.close(fd)
            raise StorageLocked(
                f"SQLite store {self.database} is in use: {reason} holds {self.path}; "
                "stop it before opening the store here"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if self.exclusive:  # for the message above; informational only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _holder(self, fd: int) -> str:
        if self.exclusive:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return "a reader (an offline tool or a migrate)"
        try:
            pid = os.pread(fd, 32, 0).decode().strip()
        except (OSError, UnicodeDecodeError):
            pid = ""
        return f"another process (pid {pid})" if pid.isdigit() else "another process"
