"""Blocking file primitives of the JSONL backend: atomic replace, directory fsync,
whole writes (appended or positioned) and positioned reads, the check that what
stands where a file of the store should is one (``file_expected``), and which
failures of a file's open or write are that file's alone, not its directory's or the
disk's (``of_its_own``). The store's lock is ``..flock``'s (see ``opening.py``).

Everything here blocks; the storage calls it from worker threads. Nothing here knows
about sessions or log lines.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from ..base import StoreMisconfigured
from .layout import temporary_path

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


def file_expected(found: os.stat_result, path: Path) -> None:
    """Raises StoreMisconfigured unless ``found`` is a regular file's: a directory (or
    FIFO, socket, device) where the store keeps one of its files was put there by hand,
    and reading it would fail (EISDIR) or hang (a FIFO) with no word of what to do.
    Opening the store again fails the same way until its operator moves it out, so a
    server exits as for a bad configuration and ``serve --workers`` does not restart."""
    if not stat.S_ISREG(found.st_mode):
        kind = "a directory" if stat.S_ISDIR(found.st_mode) else "not a regular file"
        raise StoreMisconfigured(
            f"{path} is {kind}, where the store keeps a file of its own: move it out of "
            "the store's directory, then open the store again"
        )


def write_atomic(path: Path, data: bytes, durable: bool) -> os.stat_result:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content,
    never a mix. Returns the new file's stat. With ``durable`` the new content and the
    rename are on disk when this returns."""
    tmp = temporary_path(path)
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


# Errors of a file's open or write that say it is that file, not the disk, that fails:
# at the file system's size limit, a file the process may not write, a directory in its
# place. Any other (ENOSPC, EDQUOT, EIO, EROFS, EMFILE...) is the store's.
FILE_OWN_ERRNOS: Final = frozenset({errno.EFBIG, errno.EACCES, errno.EPERM, errno.EISDIR})
# Of those, the ones a directory on the file's path gives too (it may not be searched,
# or takes no new file), for every file in it.
DIRECTORY_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM})


def of_its_own(error: OSError, opened: str | None = None) -> bool:
    """Whether ``error``, from a file's write or from the open of the file at ``opened``,
    is that file's alone. An open refused is the file's only if the file stands and
    can be looked up (``stat``, on this failure only): else a directory refused it."""
    if error.errno not in FILE_OWN_ERRNOS:
        return False
    if opened is None or error.errno not in DIRECTORY_ERRNOS:
        return True
    try:
        os.stat(opened)
    except OSError:  # EACCES: a directory not searchable; ENOENT: one takes no new file
        return False
    return True


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written: a write may be short (disk almost full,
    file size limit) and the rest then fails with the real error."""
    written = os.write(fd, data)
    if written == len(data):  # nearly always: no view, no loop
        return
    view = memoryview(data)[max(written, 0) :]
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - os.write raises rather than return 0
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``os.pwrite`` at ``offset`` until every byte is written (see ``write_all``)."""
    written = os.pwrite(fd, data, offset)
    if written == len(data):  # nearly always: no view, no loop
        return
    view, offset = memoryview(data)[max(written, 0) :], offset + max(written, 0)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - os.pwrite raises rather than return 0
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[written:], offset + written


def rewrite_range(fd: int, start: int, end: int) -> None:
    """Writes bytes ``start`` to ``end`` of the file open (for reading and writing, not
    appending) as ``fd`` again, as they read now (unsynced). After a sync that failed in
    an earlier process of this boot, the page cache may hold bytes the disk never got,
    marked clean (Linux forgets the error once it has reported it): a sync would write
    nothing of them and succeed. Written again they are dirty, and the next sync
    through ``fd`` writes them, or fails."""
    while start < end:
        chunk = read_at(fd, start, min(READ_AT_CHUNK, end - start))
        if not chunk:
            break
        pwrite_all(fd, chunk, start)
        start += len(chunk)


def sync_and_close(held: list[tuple[str, int]]) -> None:
    """Sync the descriptors (``(name, fd)``, on threads), close them all, even after a
    failure (the first is raised), and empty ``held``."""
    try:
        with ThreadPoolExecutor(8, thread_name_prefix="bamboo-sync") as pool:
            list(pool.map(lambda item: datasync(item[1]), held))
    finally:
        close_all(held)


def close_all(held: list[tuple[str, int]]) -> None:
    """Close the descriptors (``(name, fd)``), unsynced, and empty ``held``."""
    for _name, fd in held:
        with contextlib.suppress(OSError):
            os.close(fd)
    held.clear()


def read_file(path: Path) -> bytes | None:
    """The whole file, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# The most one pread asks for: it allocates what it asks for before it reads, and a
# damaged index entry's length (a u32) asked for 4 GiB of a file of a few KiB.
READ_AT_CHUNK = 1 << 20
# off_t's largest: the kernel refuses (EINVAL) a pread whose offset plus count passes
# it, so a read stops there: a damaged u64 offset near or past it is past any file.
MAX_FILE_OFFSET = 2**63 - 1


def read_at(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer only at the end of the file, none past
    it): a damaged offset or length, however large, reads what the file holds."""
    chunks = []
    length = min(length, MAX_FILE_OFFSET - offset)
    while length > 0:
        chunk = os.pread(fd, min(length, READ_AT_CHUNK), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def truncate_file(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> bool:
    """Remove ``path``; whether it was there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
