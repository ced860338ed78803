"""Blocking file primitives of the JSONL backend: atomic replace, directory fsync, the
lock file, and reading or repairing an event log.

Everything here blocks; the storage calls it from worker threads. Nothing here knows
about sessions beyond file names and log lines.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from .base import StorageLocked

READ_CHUNK: Final = 1 << 16

# fdatasync flushes the data and the size of an appended file, all a reader needs;
# it skips the timestamp update that a full fsync also writes.
datasync = getattr(os, "fdatasync", os.fsync)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a create, rename or unlink in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, durable: bool) -> os.stat_result:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content,
    never a mix. Returns the new file's stat. With ``durable`` the new content and the
    rename are on disk when this returns."""
    # A name of its own: a write can never truncate another write's temp file.
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
        stat = os.fstat(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
    return stat


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a write may be short (disk almost full,
    file size limit) and the rest then fails with the real error."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - os.write raises rather than return 0
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def read_file(path: Path) -> bytes | None:
    """The whole file, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def iter_lines(path: Path, offset: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Complete lines of ``path`` from byte ``offset`` (a line start) as ``(end_offset,
    line)`` pairs, the newline stripped; a last line without newline is not yielded.
    Reads in chunks, so a caller that stops early reads little of a long log."""
    with open(path, "rb") as f:
        f.seek(offset)
        pending = b""
        position = offset
        while end is None or position < end:
            size = READ_CHUNK if end is None else min(READ_CHUNK, end - position)
            chunk = f.read(size)
            if not chunk:
                return
            position += len(chunk)
            data = pending + chunk
            start = 0
            base = position - len(data)
            while (newline := data.find(b"\n", start)) != -1:
                yield base + newline + 1, data[start:newline]
                start = newline + 1
            pending = data[start:]


def truncate_file(path: Path, size: int, durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


class LockFile:
    """An exclusive ``flock`` on ``<base>/LOCK``, held while the storage is open.

    flock locks belong to an open file description, so a second open of the same
    directory fails both in another process and in this one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StorageLocked(
                f"storage at {self.path.parent} is in use: {self.path} is locked by "
                f"another JsonlStorage{holder}; close it before opening this directory again"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder's pid, for the message above; informational only.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
