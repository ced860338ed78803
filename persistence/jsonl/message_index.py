"""The message index: ``events/<stem>.idx`` (the stem: ``layout.py``), where each
``message`` event of a session's log is, so that a page of history reads those lines
and no others.

The file is a 32-byte header (a magic number and a digest of the session's epoch, so a
file left by an earlier session of the same id is never taken for this one's) and then
one 20-byte entry per message, in log order: ``seq``, byte ``offset`` and ``length``
of its line (little-endian u64, u64, u32). The n-th entry is the n-th message of the
log.

It is derived from the log, which stays the truth: it is written without syncs (the
storage appends the entries of new messages when it checkpoints; until then they are
in memory), and every use checks it. :func:`prepare` checks the file against the
coverage the checkpoint claims (its size, and its last entry against the log), cuts
what it cannot vouch for, and adds what the log holds beyond it; and a reader checks
that each line it reads has the entry's seq and is a message (else the storage rebuilds
the file from the log). So a crash, a lost write or a stale file costs a scan of the
log, never a wrong history.

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ..base import StorageError
from .checkpoint import Coverage
from .files import read_at, write_all
from .scan import decode_head, lines

MAGIC: Final = b"BAMBOOMI\x00\x00\x00\x01"
HEADER_SIZE: Final = 32
ENTRY: Final = struct.Struct("<QQI")  # seq, offset, length (without the newline)
WRITE_CHUNK: Final = 1 << 16

Entry = tuple[int, int, int]


def header(epoch: str) -> bytes:
    digest = hashlib.blake2b(epoch.encode(), digest_size=16).digest()
    return (MAGIC + digest).ljust(HEADER_SIZE, b"\x00")


def pack(seq: int, offset: int, length: int) -> bytes:
    return ENTRY.pack(seq, offset, length)


def entries_of(data: bytes | bytearray) -> list[Entry]:
    return list(ENTRY.iter_unpack(data))


def entry_at(data: bytes | bytearray, index: int) -> Entry:
    seq, offset, length = ENTRY.unpack_from(data, index * ENTRY.size)
    return seq, offset, length


def scan_messages(log_path: Path | str, offset: int, after_seq: int, end: int) -> Iterator[bytes]:
    """The packed entries of the messages in ``log[offset, end)``, whose first line
    follows ``after_seq``; StorageError unless that range is whole, consecutive lines."""
    seq, reached = after_seq, offset
    for head, start, stop in lines(log_path, offset, after_seq, decode_head, end):
        if head.is_message:
            yield ENTRY.pack(head.seq, start, stop - start - 1)
        seq, reached = head.seq, stop
    if reached != end:
        raise StorageError(
            f"log {log_path}: its lines end at byte {reached} (seq {seq}), not at {end}"
        )


def prepare(
    index_path: Path,
    log_path: Path,
    epoch: str,
    claimed: Coverage,
    until_seq: int,
    until_offset: int,
    writable: bool,
) -> tuple[Coverage, bytes]:
    """Make the file hold valid entries and cover the log up to ``until_offset`` (where
    seq ``until_seq`` ends). ``claimed``: what the file should hold. Returns what it
    holds now, and (read-only, or when a write fails) the entries beyond that, which the
    caller keeps in memory."""
    coverage = _check(index_path, log_path, epoch, claimed, writable)
    if coverage.offset > until_offset:
        coverage = Coverage()
        if writable:
            _reset(index_path, epoch)
    found = b"".join(scan_messages(log_path, coverage.offset, coverage.seq, until_offset))
    count = len(found) // ENTRY.size
    if not writable:
        return coverage, found
    try:
        append(index_path, epoch, coverage.count, found)
    except OSError:
        return coverage, found
    return Coverage(coverage.count + count, until_seq, until_offset), b""


def _check(
    index_path: Path, log_path: Path, epoch: str, claimed: Coverage, writable: bool
) -> Coverage:
    """The part of ``claimed`` the file really holds (cut to that, when writable)."""
    try:
        fd = os.open(index_path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except FileNotFoundError:
        # Never written (no message yet), or lost: a claim of no entries stands.
        return claimed if claimed.count == 0 else Coverage()
    try:
        size = os.fstat(fd).st_size
        if read_at(fd, 0, HEADER_SIZE) != header(epoch):
            if writable:
                _reset(index_path, epoch)
            return Coverage()
        count = min(claimed.count, (size - HEADER_SIZE) // ENTRY.size)
        coverage = claimed
        if count < claimed.count:  # entries lost (a crash before their pages were written)
            coverage = _after(fd, count)
        if count and not _matches_log(log_path, _entry(fd, count - 1)):
            coverage = Coverage()
        if writable and size != HEADER_SIZE + coverage.count * ENTRY.size:
            os.ftruncate(fd, HEADER_SIZE + coverage.count * ENTRY.size)
        return coverage
    finally:
        os.close(fd)


def _entry(fd: int, index: int) -> Entry:
    seq, offset, length = ENTRY.unpack(read_at(fd, HEADER_SIZE + index * ENTRY.size, ENTRY.size))
    return seq, offset, length


def _after(fd: int, count: int) -> Coverage:
    """The coverage of the file's first ``count`` entries."""
    if count == 0:
        return Coverage()
    seq, offset, length = _entry(fd, count - 1)
    return Coverage(count, seq, offset + length + 1)


def _matches_log(log_path: Path, entry: Entry) -> bool:
    """Whether the log holds that message's whole line where the entry says."""
    seq, offset, length = entry
    try:
        fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        data = read_at(fd, offset, length + 1)
    finally:
        os.close(fd)
    if len(data) != length + 1 or not data.endswith(b"\n"):
        return False
    try:
        head = decode_head(data[:-1])
    except ValueError:  # msgspec.DecodeError is a ValueError
        return False
    return head.seq == seq and head.is_message


def _reset(index_path: Path, epoch: str) -> None:
    """An empty index (the header only), replacing whatever was there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(index_path)
    fd = os.open(index_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, header(epoch))
    finally:
        os.close(fd)


def append(index_path: Path, epoch: str, count: int, entries: bytes) -> None:
    """Write ``entries`` after the file's first ``count`` (which :func:`prepare` checked
    in this process); with ``count`` 0 the file is made anew."""
    if not entries:
        return
    if count == 0:
        _reset(index_path, epoch)
    fd = os.open(index_path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        position = HEADER_SIZE + count * ENTRY.size
        view = memoryview(entries)
        while view:
            written = os.pwrite(fd, view[:WRITE_CHUNK], position)
            view, position = view[written:], position + written
    finally:
        os.close(fd)


def create(index_path: Path, epoch: str, entries: bytes) -> None:
    """A new index holding ``entries`` (a session rebuilt from its log); none at all
    when there are none."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(index_path)
    append(index_path, epoch, 0, entries)


def read(index_path: Path, first: int, count: int) -> list[Entry]:
    """Entries ``first .. first + count`` of the file."""
    if count <= 0:
        return []
    fd = os.open(index_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = read_at(fd, HEADER_SIZE + first * ENTRY.size, count * ENTRY.size)
    finally:
        os.close(fd)
    if len(data) != count * ENTRY.size:
        raise StaleIndex(f"message index {index_path} is shorter than it should be")
    return entries_of(data)


class StaleIndex(StorageError):
    """The index does not describe the log (found while reading): rebuild it."""
