"""The shared write-ahead log of ``fsync`` mode: one ``fdatasync`` per group commit.

Without it, a group commit that touched S session logs costs S ``fdatasync`` calls (S
journal commits). With it, each batch writes every session's lines to its own
``events/<stem>.jsonl`` *without* a sync, appends the same lines to one shared segment
file ``wal/<n>.wal``, syncs that one file, and only then acknowledges. So an
acknowledged event is always in a synced segment, whatever happens to the page cache of
the session logs.

A segment is one record per line, a JSON object encoded by msgspec:

- ``{"sid": ID, "seq": FIRST, "off": OFFSET, "crc": CRC32, "lines": [LINE, ...]}``: a
  session's share of one batch. ``lines`` are that batch's log lines verbatim (each is a
  JSON object, embedded as ``msgspec.Raw``), ``seq`` the first one's seq, ``off`` the
  byte offset in the session log where they start, ``crc`` the CRC-32 of the lines as
  the log holds them (joined and ended by newlines). A record whose line is cut, does
  not decode or fails its CRC is ignored (a torn tail).
- ``{"sid": ID, "deleted": true, "epoch": EPOCH}``: the session was deleted; its earlier
  records must never flow into a new session of the same id.
- ``{"sid": ID, "undeleted": true, "epoch": EPOCH}``: that deletion failed after it was
  recorded (its checkpoint could not become a tombstone) and the session is back: the
  deletion is cancelled, and the session's earlier records count again. Without it, a
  crash before the session's next append would let the next open finish a delete its
  caller was told had failed.

A commit writes its cancellations first, then its records of lines, then its deletions.
A cancellation's deletion is always in an earlier commit, and an append to the session
in the same commit came after it: written after that append's record, replay would take
the record for a new session's and forget the session's earlier records.

Room ahead of the records: the writer keeps the segment allocated, and synced, some way
past its last record (``posix_fallocate``, ``ROOM_AHEAD_BYTES`` at a time; the room reads
as zeros), and writes the records into it. The file's size then does not change at a
commit, so its ``fdatasync`` writes the data alone, not the inode too
(``bench/fsync_floor.py``: 0.6x the CPU and wall time of a sync that appends, on ext4;
PostgreSQL pre-writes its WAL segments for the same reason). So the records end where
the zeros begin, not at the file's size; a record never holds a NUL byte (JSON text
escapes it). A zero byte inside a line is a page a crash left unwritten in the last
commit, never synced: replay ignores that line.

Rotation (``LogWriter``): when the current segment is larger than ``wal_segment_bytes``
or older than ``wal_segment_age``, new batches go to a new segment; in the background,
every session log written during the old one is synced, then the old segment is
deleted. Segments are deleted strictly in order, and never before every log they cover
is synced. A clean close syncs everything and deletes every segment.

Replay at open is ``wal_replay.py``'s.

The segment is used by one step of a group commit at a time (``commits.py``): its
``write`` runs on the event loop's thread for a small batch; ``sync``, ``cut_back`` and
``rotate`` block, and run on the writer's I/O thread (or the sync helper syncs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from resource import RLIM_INFINITY, RLIMIT_FSIZE, getrlimit
from typing import Final

import msgspec

from .files import datasync, fsync_dir, pwrite_all
from .layout import Layout

log = logging.getLogger(__name__)

ROOM_AHEAD_BYTES: Final = 256 * 1024
_fallocate = getattr(os, "posix_fallocate", None)


class _Record(msgspec.Struct, omit_defaults=True):
    """A deletion's record, or its cancellation's, as written (a record of lines is
    made as bytes directly: ``encode_lines``)."""

    sid: str
    deleted: bool = False
    undeleted: bool = False
    epoch: str = ""  # of the deleted session: a re-created one has another


class ReadRecord(msgspec.Struct):
    """A record as read back: each line of the log, verbatim."""

    sid: str
    seq: int = 0
    off: int = 0
    crc: int = 0
    lines: list[msgspec.Raw] = []
    deleted: bool = False
    undeleted: bool = False
    epoch: str = ""

    @property
    def of_lines(self) -> bool:
        """A record of log lines, not a deletion or its cancellation."""
        return not (self.deleted or self.undeleted)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ReadRecord)


def encode_lines(session_id: str, first_seq: int, offset: int, data: bytes) -> bytes:
    """The record of ``data`` (whole log lines, each ended by a newline) for one session,
    newline included. A log line is compact JSON, so it holds no raw newline, and the
    lines joined by commas are the array's items as they are. Made as bytes directly,
    at every group commit: a Struct made, encoded and joined cost a fifth more."""
    return _LINES_RECORD % (
        _encoder.encode(session_id),
        first_seq,
        offset,
        zlib.crc32(data),
        data[:-1].replace(b"\n", b","),
    )


_LINES_RECORD: Final = b'{"sid":%b,"seq":%d,"off":%d,"crc":%d,"lines":[%b]}\n'


def encode_deleted(session_id: str, epoch: str) -> bytes:
    return _encoder.encode(_Record(session_id, deleted=True, epoch=epoch)) + b"\n"


def encode_undeleted(session_id: str, epoch: str) -> bytes:
    return _encoder.encode(_Record(session_id, undeleted=True, epoch=epoch)) + b"\n"


def decode_record(line: bytes) -> ReadRecord:
    return _decoder.decode(line)


# -- the writer's side -----------------------------------------------------------------


@dataclass(slots=True)
class Segment:
    number: int
    path: Path
    touched: set[str] = field(default_factory=set)  # sessions whose logs it covers
    size: int = 0  # of the file, once left behind (what keeping it costs the disk)


class SegmentFile:
    """The current segment, appended to by one step of a group commit at a time."""

    def __init__(self, layout: Layout, segment_bytes: int, segment_age: float) -> None:
        self._layout = layout
        self.segment_bytes = segment_bytes
        self.segment_age = segment_age
        self._next_number = 0  # found at the first rotation, after open's replay
        self.current: Segment | None = None
        self._fd = -1
        self.size = 0  # where the records end and the next one goes
        # Room allocated and synced from ``size`` to here; after a failure to allocate
        # it, or a cut-back (which truncates), none: records up to here are appended.
        self.room_end = 0
        self._started = 0.0
        # Bytes known good at the end of the segment, when cutting a failed write off
        # did not work: retried before anything else is appended.
        self.needs_truncate: int | None = None

    def due(self, now: float, incoming: int) -> bool:
        """Whether the next batch (``incoming`` bytes) should start a new segment."""
        if self.current is None:
            return True
        if self.size == 0:
            return False
        if self.size >= self.segment_bytes or now - self._started >= self.segment_age:
            return True
        # A per-file size limit (RLIMIT_FSIZE) must not make the one shared file fail
        # where the session logs, each far smaller, would not.
        limit = getrlimit(RLIMIT_FSIZE)[0]
        return limit != RLIM_INFINITY and self.size + incoming > limit

    def rotate(self, now: float) -> Segment | None:
        """Start a new segment (durably: its directory entry is synced); returns the old
        one, whose records are all synced, for retirement."""
        if self.needs_truncate is not None:
            # A failed batch's record must be cut before this segment is left behind:
            # abandoned, it would be replayed as if it had been acknowledged.
            self._truncate(self.needs_truncate)
        if not self._next_number:
            segments = self._layout.segments()
            self._next_number = segments[-1][0] + 1 if segments else 1
        number = self._next_number
        path = self._layout.segment(number)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags, 0o644)
        try:
            fsync_dir(self._layout.wal)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._next_number = number + 1
        old = self._left_behind()
        self.current = Segment(number, path)
        self._fd, self.size, self.room_end, self._started = fd, 0, 0, now
        self.needs_truncate = None
        return old

    @property
    def fd(self) -> int:
        """The current segment's descriptor (-1 before the first)."""
        return self._fd

    def ready(self, now: float, incoming: int) -> bool:
        """Whether the next batch can go in without first starting a segment, cutting
        a failed record away or allocating room ahead: each syncs, so they belong on
        the I/O thread."""
        # ``due``'s checks, inline: this runs at every group commit, on the loop.
        size = self.size
        if size + incoming > self.room_end or self.needs_truncate is not None:
            return False
        if self.current is None:
            return False
        if size == 0:  # an empty segment is never left for a new one
            return True
        if size >= self.segment_bytes or now - self._started >= self.segment_age:
            return False
        limit = getrlimit(RLIMIT_FSIZE)[0]
        return limit == RLIM_INFINITY or size + incoming <= limit

    def append(self, data: bytes) -> None:
        """Write and sync ``data``; on failure the segment is cut back to where it was
        (or marked for that) and the error raised: nothing of ``data`` may be replayed."""
        if self.needs_truncate is not None:
            self._truncate(self.needs_truncate)
        self._make_room(len(data))
        before = self.size
        try:
            self.write(data)
        except OSError:
            self.cut_back(before)
            raise
        self.sync(before)

    def write(self, data: bytes) -> int:
        """Write ``data`` without a sync; the size before it, to ``sync`` or cut back to.
        On failure the caller cuts back (``cut_back``) before anything else is written."""
        before = self.size
        self.size = before + len(data)
        # ``pwrite_all``'s first write here, at every group commit: nearly always the only one.
        written = os.pwrite(self._fd, data, before)
        if written != len(data):
            pwrite_all(self._fd, memoryview(data)[written:], before + written)
        return before

    def _make_room(self, incoming: int) -> None:
        """Room for the next ``incoming`` bytes of records and ``ROOM_AHEAD_BYTES`` more,
        allocated and synced ahead, unless they fit already: ``posix_fallocate`` sets
        the file's size and blocks without writing data (the room reads as zeros, and
        never changes what the file holds). Where it fails (a full disk, a file size
        limit) or does not exist (macOS), the records up to that mark are appended:
        slower, as correct."""
        if self.size + incoming <= self.room_end:
            return
        self.room_end = self.size + incoming + ROOM_AHEAD_BYTES  # the next try is past it
        if _fallocate is None:
            return
        # From the file's end: glibc's stand-in for a filesystem without fallocate(2)
        # reads a byte wherever the file has data, which this write-only descriptor
        # cannot.
        file_end = os.fstat(self._fd).st_size
        if file_end >= self.room_end:
            return
        try:
            _fallocate(self._fd, file_end, self.room_end - file_end)
            datasync(self._fd)
        except OSError as exc:
            log.warning("could not allocate room ahead in the WAL segment: %s", exc)
            # ext4 keeps what a failed call allocated, and a full disk would stay full.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, file_end)

    def sync(self, before: int) -> None:
        """Sync what was written since ``before``; on failure cut it off and raise."""
        try:
            datasync(self._fd)
        except OSError:
            self.cut_back(before)
            raise

    def cut_back(self, before: int) -> None:
        """Cut the segment back to ``before``, or mark it for that when it fails."""
        try:
            self._truncate(before)
        except OSError as cut_error:
            log.error(
                "could not cut the WAL segment %s back to %d bytes: %s; retrying before "
                "its next write",
                self.current.path if self.current else "?",
                before,
                cut_error,
            )
            self.needs_truncate = before

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        datasync(self._fd)
        self.size, self.needs_truncate = size, None

    def close(self) -> Segment | None:
        current = self._left_behind()
        self._fd, self.current = -1, None
        return current

    def _left_behind(self) -> Segment | None:
        """The current segment, its size noted and its descriptor closed."""
        current = self.current
        if self._fd >= 0:
            if current is not None:
                # The room allocated ahead is on the disk too.
                current.size = max(self.size, self.room_end)
                with contextlib.suppress(OSError):
                    current.size = os.fstat(self._fd).st_size
            with contextlib.suppress(OSError):
                os.close(self._fd)
        return current


def sync_log(layout: Layout, session_id: str) -> None:
    """Sync a session's log through a descriptor of its own; a log deleted meanwhile
    needs nothing. Only where nothing is promised on a power cut (``os`` mode's logs
    closed before their round): a descriptor opened after a write-back error may not be
    told of it, so ``fsync`` mode syncs through the descriptor the lines went through
    (``logfiles.py``)."""
    try:
        fd = os.open(layout.log_file(session_id), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        datasync(fd)
    finally:
        os.close(fd)


def remove_segment(segment: Segment) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment.path)
    fsync_dir(segment.path.parent)
