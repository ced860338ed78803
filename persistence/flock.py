"""The reader/writer lock of a store on disk: a ``flock`` on one lock file, taken
exclusively by a writer (a server, ``cleanup``, the destination of a migrate) and shared
by offline readers (``ls``, ``show``, ``recount``, the source of a migrate), so that no
server starts on a store a tool is reading, and no tool reads one a server holds.

A writer writes its pid into the file, so that a process refused learns at once, in
one line, who holds the store: readers, or the writer with that pid. flock locks
belong to an open file description and go away with the process, so a killed server
never leaves a stale lock behind, and a second open of the same store is refused in
this process as in another.

The SQLite and JSONL backends both lock this way; :class:`LockWording` is how each
names its store in the lines of a refusal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import StorageError, StorageLocked

# A reader that may not create the lock file where the store is (a mounted backup, a
# read-only file system): it takes the lock if the file is there.
_READ_ONLY_DIRECTORY_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


@dataclass(frozen=True, slots=True)
class LockWording:
    """How a backend's refusals name its store and those who hold it."""

    store: str  # "cannot lock <store>: <why>" when the lock file cannot be opened
    refusal: Callable[[str], str]  # the line of a refused open, given who holds the lock
    readers: str  # who holds it shared
    writer: str  # who holds it exclusively: "<writer> (pid N)" when the pid is known


class StoreFlock:
    """The lock on one store's lock file, held from a ``take_*`` until :meth:`release`.
    Both ``take_*`` raise :class:`StorageLocked` (naming the holder) when the store is
    held against them, :class:`StorageError` when the lock file cannot be opened."""

    def __init__(self, path: Path, wording: LockWording) -> None:
        self.path = path
        self.wording = wording
        self._fd: int | None = None

    def take_exclusive(self) -> None:
        """Take the lock for a writer: no other writer or reader may hold it."""
        try:
            fd = self._open_for_writing()
        except OSError as exc:
            raise self._cannot_lock(exc) from None
        self._lock(fd, fcntl.LOCK_EX)
        # The holder's pid, for the message of a refusal; informational only, so a
        # lock file that takes no bytes (a FIFO, /dev/null, a full disk) holds anyway.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def take_shared(self) -> None:
        """Take the lock for a reader: other readers may too, a writer may not."""
        try:
            fd = self._open_for_writing()
        except OSError as exc:
            if exc.errno not in _READ_ONLY_DIRECTORY_ERRNOS:
                raise self._cannot_lock(exc) from None
            # Where this reader may not create the file, no server could run either
            # (it writes in the same directory): the lock is taken if the file is
            # there, and not needed if it is not.
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
        self._lock(fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Let the lock go (nothing if none is held); safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder_pid(self) -> int | None:
        """The pid holding the lock exclusively now, or None (nobody, or not known).
        Asks the kernel's lock table rather than the lock itself, so it takes nothing
        and creates nothing: a read-only open may call it while a server starts."""
        try:
            inode = os.stat(self.path).st_ino
            with open("/proc/locks", encoding="ascii") as locks:
                table = locks.read().splitlines()
        except OSError:
            return None
        for line in table:
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
            if (
                len(fields) >= 6
                and (fields[1], fields[3]) == ("FLOCK", "WRITE")
                and fields[5].rsplit(":", 1)[-1] == str(inode)
                and fields[4].isdigit()
            ):
                return int(fields[4])
        return None

    def _open_for_writing(self) -> int:
        # Never through a link (ELOOP: refused): the store's owner may plant its lock
        # file as one, and root (a tool) would then write its pid into the file it
        # names, or make that file anywhere and (below) give it to the owner.
        opening = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, opening)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.path, opening | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return os.open(self.path, opening)  # made by another process meanwhile
        self._give_to_directory_owner(fd)
        return fd

    def _give_to_directory_owner(self, fd: int) -> None:
        """A lock file made by a tool run as root belongs to the store's owner, not to
        root: else the server, run as that owner, could not open it again."""
        try:
            owner = os.stat(self.path.parent)
            if (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, owner.st_uid, owner.st_gid)
        except OSError:
            pass  # not root: the file is the creator's, as any file it makes

    def _cannot_lock(self, error: OSError) -> StorageError:
        return StorageError(f"cannot lock {self.wording.store}: {error.strerror}: {self.path}")

    def _lock(self, fd: int, how: int) -> None:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd, how)
            os.close(fd)
            raise StorageLocked(self.wording.refusal(holder)) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _holder(self, fd: int, refused: int) -> str:
        """Who holds the lock that refused ``refused``: readers (a shared lock would be
        granted) or a writer, whose pid is in the file."""
        if refused == fcntl.LOCK_EX:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return self.wording.readers
        try:
            pid = os.pread(fd, 32, 0).decode().strip()
        except (OSError, UnicodeDecodeError):
            pid = ""
        return f"{self.wording.writer} (pid {pid})" if pid.isdigit() else self.wording.writer
