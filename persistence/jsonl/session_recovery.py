"""Recovering one session at open (``recovery.py`` does the directories): from the
index snapshot when its files are as the snapshot saw them, else from its checkpoint
and the log lines after it; or from its whole log (no checkpoint, or a log that lost
history: then a new epoch); or by converting an old-format checkpoint.

A log's lines past the checkpoint are read by their heads only (seq, time, key, event
type): enough to bring the metadata up to date and to index the messages among them.
What follows the last valid line is cut (``repair.py``). Read-only, nothing is written
or cut: the same sessions, in memory.

Everything here blocks; it runs in a worker thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from bamboo_session.protocol.models import Message, SessionMetadata, new_epoch

from . import checkpoint, message_index, snapshot
from .checkpoint import (
    Checkpoint,
    CheckpointDamaged,
    Coverage,
    FileStamp,
    LegacyCheckpoint,
    SlotFile,
)
from .config import JsonlStorageConfig
from .files import file_expected, unlink_quietly
from .layout import Layout
from .repair import cut_tail
from .scan import BrokenLine, decode_head, lines

log = logging.getLogger(__name__)

_DIRECTORY: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(slots=True)
class RecoveredSession:
    """One session as found on disk (after repair). Its checkpoint covers the log up to
    ``checkpoint_offset`` (seq ``checkpoint_seq``); the index entries of the messages
    after that are in ``pending`` (the index file holds ``index``)."""

    metadata: SessionMetadata
    checkpoint_seq: int
    checkpoint_offset: int
    log_size: int
    index: Coverage = field(default_factory=Coverage)
    pending: bytes = b""
    preamble: int = 0
    stamp: FileStamp | None = None
    preamble_messages: list[Message] | None = None  # read-only: not written anywhere
    # The checkpoint file's slots as read, its newest taken as the one on disk: true
    # once the open's sync of the file system returned (RecoveryReport.device_to_sync).
    slots: SlotFile | None = None
    # The device of the checkpoint file as found (read or stat'ed, through a symlink);
    # None when the open wrote it (durably, in sessions/) or there is none.
    device: int | None = None


@dataclass(slots=True)
class RecoveryReport:
    sessions: list[RecoveredSession] = field(default_factory=list)
    from_snapshot: int = 0
    checkpoints_repaired: int = 0
    converted: int = 0  # checkpoints of the old format, converted
    torn_lines_cut: int = 0  # logs whose unacknowledged tail was cut (an ordinary crash)
    damaged: int = 0  # files kept aside as damaged (see JsonlStorage.damaged_files)
    epochs_renewed: int = 0
    wal_segments: int = 0  # WAL segments found (a crash, or a close that could not sync)
    wal_events_replayed: int = 0  # acknowledged events a log lacked, restored from them
    # Older WAL segments kept aside as damaged, removed to keep them within the bounds
    # (JsonlStorageConfig.wal_damaged_max_count / wal_damaged_max_bytes; each logged).
    wal_damaged_removed: int = 0
    # Deletes an obstacle keeps from being finished, or whose failure left one (logged).
    deletes_unfinished: int = 0
    # The device whose file system the open syncs once repaired (opening.py, in a
    # worker thread once it returned: open_sync.py): once that sync returned, every
    # checkpoint file on it, as found, is on disk. None: no such sync (fs_sync.py).
    device_to_sync: int | None = None
    # The sessions directory could not be opened for it: the store distrusts its syncs.
    file_system_sync_failed: bool = False


class Directories:
    """The session and event directories, open: stats and reads relative to them skip
    the path walk per file, most of the cost of checking 100,000 sessions."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._sessions = os.open(layout.sessions, _DIRECTORY)
        try:
            self._events = os.open(layout.events, _DIRECTORY)
        except BaseException:
            os.close(self._sessions)
            raise

    def close(self) -> None:
        os.close(self._sessions)
        os.close(self._events)

    def checkpoint_stat(self, session_id: str) -> os.stat_result | None:
        try:
            return os.stat(self.layout.checkpoint_name(session_id), dir_fd=self._sessions)
        except FileNotFoundError:
            return None

    def read_checkpoint(self, session_id: str) -> tuple[bytes, os.stat_result] | None:
        """The checkpoint file's content and stat (its stamp), or None."""
        try:
            # Non-blocking: a FIFO in its place would hold the open until a writer came.
            flags = os.O_RDONLY | os.O_NONBLOCK
            fd = os.open(self.layout.checkpoint_name(session_id), flags, dir_fd=self._sessions)
        except FileNotFoundError:
            return None
        try:
            found = os.fstat(fd)
            file_expected(found, self.layout.checkpoint(session_id))
            return os.pread(fd, found.st_size, 0), found  # small: one read takes it all
        finally:
            os.close(fd)

    def log_size(self, session_id: str) -> int | None:
        try:
            found = os.stat(self.layout.log_name(session_id), dir_fd=self._events)
        except FileNotFoundError:
            return None
        file_expected(found, self.layout.log(session_id))
        return found.st_size


class SessionRecovery:
    """Recovers sessions one at a time, counting what it did in ``report``."""

    def __init__(
        self, config: JsonlStorageConfig, dirs: Directories, report: RecoveryReport
    ) -> None:
        self.config = config
        self.layout = config.layout
        self.dirs = dirs
        self.writable = not config.read_only
        self.report = report

    def from_snapshot(self, entry: snapshot.SnapshotEntry) -> RecoveredSession | None:
        """The entry, if the session's files are exactly as the snapshot saw them."""
        session_id = entry.metadata.id
        stat = self.dirs.checkpoint_stat(session_id)
        if stat is None or checkpoint.stamp_of(stat) != tuple(entry.stamp):
            return None
        if (self.dirs.log_size(session_id) or 0) != entry.log_offset:
            return None
        meta = entry.metadata
        return RecoveredSession(
            meta,
            meta.last_seq,
            entry.log_offset,
            entry.log_offset,
            entry.index,
            preamble=entry.preamble,
            stamp=checkpoint.stamp_of(stat),
            device=stat.st_dev,
        )

    def recover(
        self, session_id: str, has_checkpoint: bool, acknowledged: int = 0
    ) -> RecoveredSession | None:
        """The session as its checkpoint and log say. ``acknowledged``: a seq the WAL
        acknowledged but could not restore to the log (``wal_replay``); if the log ends
        before it, a new epoch starts, so that no seq means two events."""
        found, stat = self._read_checkpoint(session_id) if has_checkpoint else (None, None)
        stamp, device = (checkpoint.stamp_of(stat), stat.st_dev) if stat else (None, None)
        size = self.dirs.log_size(session_id)
        if found is None and size is None:
            return None
        if isinstance(found, LegacyCheckpoint):
            return self._convert(session_id, found, size or 0, acknowledged)
        if found is None:
            log.warning("session %r has a log but no checkpoint: read from the log", session_id)
            metadata = SessionMetadata(id=session_id, ttl=self.config.default_ttl)
            return self.rebuild(session_id, metadata, 0, size or 0, orphan=True)
        saved = found.checkpoint
        meta, covered, covered_seq = saved.metadata, saved.log_offset, saved.metadata.last_seq
        if acknowledged > meta.last_seq:
            meta.last_seq = acknowledged
            return self.rebuild(session_id, meta, saved.preamble, size or 0, orphan=False)
        if size == covered or (size is None and covered_seq == 0):
            # Up to date; or created, then a crash before its (empty) log existed.
            return RecoveredSession(
                meta, covered_seq, covered, covered, saved.index, b"", saved.preamble, stamp,
                slots=found.slots(synced=found.slot), device=device,
            )  # fmt: skip
        if size is not None and size > covered:
            tail = _scan(self.layout.log(session_id), covered, covered_seq, size)
            if tail.last_seq > covered_seq or _is_fragment(self.layout, session_id, covered):
                self._cut(session_id, size, tail)
                meta.last_seq = tail.last_seq
                meta.message_count += tail.messages
                _touch(meta, tail.last_ts)
                return RecoveredSession(
                    meta, covered_seq, covered, tail.end, saved.index,
                    bytes(tail.entries), saved.preamble, stamp,
                    slots=found.slots(synced=found.slot), device=device,
                )  # fmt: skip
        # The log is shorter than the checkpoint says, or does not continue where it
        # says: read it all (a new epoch if history the checkpoint had seen is gone).
        return self.rebuild(session_id, meta, saved.preamble, size or 0, orphan=False)

    def _read_checkpoint(
        self, session_id: str
    ) -> tuple[checkpoint.Found | LegacyCheckpoint | None, os.stat_result | None]:
        read = self.dirs.read_checkpoint(session_id)
        if read is None:
            return None, None
        data, stat = read
        try:
            return checkpoint.parse(data, session_id), stat
        except CheckpointDamaged as exc:
            path = self.layout.checkpoint(session_id)
            if self.writable:
                aside = self.layout.damaged(path, str(os.getpid()))
                log.error("checkpoint %s is unreadable (%s); moved to %s", path, exc, aside)
                os.replace(path, aside)
                self.report.damaged += 1
            else:
                log.error("checkpoint %s is unreadable (%s)", path, exc)
            return None, None

    def rebuild(
        self, session_id: str, meta: SessionMetadata, preamble: int, size: int, orphan: bool
    ) -> RecoveredSession:
        """The session as its whole log says (a log without checkpoint, or one that lost
        history: then a new epoch tells clients their seqs mean other events now)."""
        scan = _scan(self.layout.log(session_id), 0, None, size) if size else _Scan()
        self._cut(session_id, size, scan)
        if orphan:
            if scan.first_ts is not None:
                meta.created_at = scan.first_ts
            meta.touch(scan.last_ts or meta.created_at)
        elif scan.last_seq >= meta.last_seq:
            _touch(meta, scan.last_ts)
        else:
            log.warning(
                "session %r: its log holds seqs up to %d, less than were acknowledged "
                "(%d); starting a new epoch",
                session_id,
                scan.last_seq,
                meta.last_seq,
            )
            meta.epoch = new_epoch()
            self.report.epochs_renewed += 1
            _touch(meta, scan.last_ts)
        meta.last_seq = scan.last_seq
        meta.message_count = preamble + scan.messages
        return self._save(session_id, Checkpoint(metadata=meta, preamble=preamble), scan)

    def _convert(
        self, session_id: str, legacy: LegacyCheckpoint, size: int, acknowledged: int = 0
    ) -> RecoveredSession:
        """An old-format checkpoint: its messages the log does not hold (by id) become
        the preamble; the rest of the history is the log's."""
        scan = _scan(self.layout.log(session_id), 0, None, size, with_ids=True) if size else _Scan()
        self._cut(session_id, size, scan)
        in_log = collections.Counter(mid for seq, mid in scan.ids if seq <= legacy.last_seq)
        preamble = []
        for message in legacy.messages:
            if in_log[message.id] > 0:
                in_log[message.id] -= 1
            else:
                preamble.append(message)
        meta = legacy.metadata
        if scan.last_seq < max(legacy.last_seq, acknowledged):
            log.warning("session %r: its log lost history; starting a new epoch", session_id)
            meta.epoch = new_epoch()
            self.report.epochs_renewed += 1
        meta.last_seq = scan.last_seq
        meta.message_count = len(preamble) + scan.messages
        _touch(meta, scan.last_ts)
        self.report.converted += 1
        if self.writable and preamble:
            checkpoint.write_preamble(self.layout.preamble(session_id), preamble)
        elif self.writable:
            unlink_quietly(self.layout.preamble(session_id))  # of a conversion cut short
        saved = Checkpoint(metadata=meta, preamble=len(preamble))
        recovered = self._save(session_id, saved, scan)
        if not self.writable:
            recovered.preamble_messages = preamble
        return recovered

    def _save(self, session_id: str, saved: Checkpoint, scan: _Scan) -> RecoveredSession:
        """A rebuilt session's index and checkpoint, written (durably: the checkpoint is
        all there is of its metadata); in memory only when read-only."""
        meta = saved.metadata
        if not self.writable:
            return RecoveredSession(
                meta, 0, 0, scan.end, Coverage(), bytes(scan.entries), saved.preamble
            )
        message_index.create(self.layout.message_index(session_id), meta.epoch, bytes(scan.entries))
        saved.index = Coverage(scan.messages, scan.last_seq, scan.end)
        saved.log_offset = scan.end
        _slots, stamp = checkpoint.create(self.layout.checkpoint(session_id), saved)
        self.report.checkpoints_repaired += 1
        return RecoveredSession(
            meta, meta.last_seq, scan.end, scan.end, saved.index, b"", saved.preamble, stamp
        )

    def _cut(self, session_id: str, size: int, scan: _Scan) -> None:
        if size > scan.end and self.writable:
            cut = cut_tail(self.layout, self.layout.log(session_id), size, scan.end, scan.last_seq)
            self.report.torn_lines_cut += cut.damaged is None
            self.report.damaged += cut.damaged is not None


@dataclass(slots=True)
class _Scan:
    """What a scan of (part of) a log found: its valid lines and their messages."""

    first_seq: int | None = None
    last_seq: int = 0
    end: int = 0
    messages: int = 0
    entries: bytearray = field(default_factory=bytearray)  # message index entries
    ids: list[tuple[int, str]] = field(default_factory=list)  # (seq, message id)
    first_ts: datetime | None = None
    last_ts: datetime | None = None


def _scan(
    path: Path, offset: int, after_seq: int | None, end: int, with_ids: bool = False
) -> _Scan:
    """The valid lines from ``offset`` (following ``after_seq``; None: from whatever
    seq the first holds), up to the first that does not decode or follow."""
    scan = _Scan(last_seq=after_seq or 0, end=offset)
    with contextlib.suppress(BrokenLine, FileNotFoundError):
        for head, start, stop in lines(path, offset, after_seq, decode_head, end):
            if scan.first_seq is None:
                scan.first_seq, scan.first_ts = head.seq, head.ts
            scan.last_seq, scan.end, scan.last_ts = head.seq, stop, head.ts
            if head.is_message:
                scan.messages += 1
                scan.entries += message_index.pack(head.seq, start, stop - start - 1)
                if with_ids:
                    scan.ids.append((head.seq, head.message_id))
    return scan


def _is_fragment(layout: Layout, session_id: str, offset: int) -> bool:
    """Whether the log holds no newline from ``offset`` on: a last line cut short."""
    with open(layout.log(session_id), "rb") as file:
        file.seek(offset)
        while chunk := file.read(1 << 16):
            if b"\n" in chunk:
                return False
    return True


def _touch(meta: SessionMetadata, last_ts: datetime | None) -> None:
    if last_ts is not None and last_ts > meta.last_activity_at:
        meta.touch(last_ts)
