"""Opening a JSONL data directory: repair what a crash left, and rebuild the index.

A crash can leave, per session:
- a torn last line in the event log (a write cut short): cut back to the last newline;
- a checkpoint behind its log (appends since the last checkpoint): brought up to date
  from the log and rewritten;
- a log without a checkpoint: recovered as a session with default metadata;
- a checkpoint whose log is missing or shorter than it says: the history is lost, so the
  session gets a new ``epoch`` and ``last_seq`` becomes what the log really holds;
- a ``.tmp`` file (a checkpoint being written): removed, the old checkpoint stands;
- a ``.deleted`` tombstone (a delete in progress): the delete is finished;
- WAL segments (``wal/``, ``fsync`` mode): acknowledged lines a log may lack (its tail
  was never synced) are replayed into it from the segments, before anything else reads
  the logs, for every session that still has a checkpoint; then the segments are
  deleted (see ``persistence/wal.py``).

Fast start: a clean close writes ``index/snapshot.msgpack`` holding every session's
metadata and the size and identity of its files. Open consumes it (deletes it before any
new write), and takes an entry only when the files still match it; any other session is
recovered from its files. So a stale snapshot can never hide a change.

Everything here blocks; the storage runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

import msgspec

from bamboo_session.protocol.codec import decode_stored_event
from bamboo_session.protocol.ids import is_valid_session_id
from bamboo_session.protocol.models import (
    Message,
    MessageEvent,
    SessionMetadata,
    StoredEvent,
    new_epoch,
)

from .config import JsonlStorageConfig
from .files import fsync_dir, iter_lines, read_file, truncate_file, write_atomic
from .wal import discard_segments, replay
from .writer import LOG_SUFFIX

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX: Final = ".json"
TOMBSTONE_SUFFIX: Final = ".json.deleted"
TMP_SUFFIX: Final = ".tmp"
SNAPSHOT_NAME: Final = "snapshot.msgpack"
SNAPSHOT_VERSION: Final = 1

FileStamp = tuple[int, int, int]  # (inode, size, mtime_ns): a file's identity and state


class Checkpoint(msgspec.Struct):
    """``sessions/<id>.json``: a session (the seed's ``{metadata, messages}``) plus how
    far into the event log it reaches, by seq and by byte offset."""

    metadata: SessionMetadata
    messages: list[Message] = []
    last_seq: int = 0
    log_offset: int = 0


class _CheckpointHead(msgspec.Struct):
    """A checkpoint without its messages: decoding skips them, so open stays fast."""

    metadata: SessionMetadata
    last_seq: int = 0
    log_offset: int = 0


class SnapshotEntry(msgspec.Struct, array_like=True):
    metadata: SessionMetadata
    checkpoint_seq: int
    checkpoint_offset: int
    checkpoint_stamp: FileStamp
    log_size: int  # -1: no log file


class _Snapshot(msgspec.Struct):
    version: int
    entries: list[SnapshotEntry]


_checkpoint_encoder = msgspec.json.Encoder()
_checkpoint_decoder = msgspec.json.Decoder(Checkpoint)
_head_decoder = msgspec.json.Decoder(_CheckpointHead)
_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return _checkpoint_encoder.encode(checkpoint)


def decode_checkpoint(data: bytes) -> Checkpoint:
    return _checkpoint_decoder.decode(data)


@dataclass(slots=True)
class RecoveredSession:
    """One session as found on disk, after repair."""

    metadata: SessionMetadata
    checkpoint_seq: int
    checkpoint_offset: int
    checkpoint_stamp: FileStamp | None
    log_size: int


@dataclass(slots=True)
class RecoveryReport:
    sessions: list[RecoveredSession] = field(default_factory=list)
    from_snapshot: int = 0
    checkpoints_repaired: int = 0
    torn_lines_cut: int = 0
    epochs_renewed: int = 0
    wal_segments: int = 0  # WAL segments found (a crash, or a close that could not sync)
    wal_events_replayed: int = 0  # acknowledged events a log lacked, restored from them


class _Layout:
    def __init__(self, config: JsonlStorageConfig) -> None:
        self.sessions = config.sessions_dir
        self.events = config.events_dir
        self.index = config.index_dir
        self._sessions_fd = -1
        self._events_fd = -1

    def __enter__(self) -> _Layout:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        self._sessions_fd = os.open(self.sessions, flags)
        self._events_fd = os.open(self.events, flags)
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._sessions_fd)
        os.close(self._events_fd)

    def checkpoint(self, session_id: str) -> Path:
        return self.sessions / (session_id + CHECKPOINT_SUFFIX)

    def log(self, session_id: str) -> Path:
        return self.events / (session_id + LOG_SUFFIX)

    # Stats relative to the open directories: no pathlib and no path walk per file,
    # which is most of the cost of validating 100,000 snapshot entries.
    def stat_checkpoint(self, session_id: str) -> os.stat_result | None:
        try:
            return os.stat(session_id + CHECKPOINT_SUFFIX, dir_fd=self._sessions_fd)
        except FileNotFoundError:
            return None

    def read_checkpoint(self, session_id: str) -> bytes | None:
        try:
            fd = os.open(session_id + CHECKPOINT_SUFFIX, os.O_RDONLY, dir_fd=self._sessions_fd)
        except FileNotFoundError:
            return None
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def log_size(self, session_id: str) -> int | None:
        try:
            return os.stat(session_id + LOG_SUFFIX, dir_fd=self._events_fd).st_size
        except FileNotFoundError:
            return None


def stamp_of(stat: os.stat_result) -> FileStamp:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def recover(config: JsonlStorageConfig) -> RecoveryReport:
    """Repair the data directory and return every session in it."""
    durable = True  # every durability mode syncs what recovery repairs
    for directory in (config.sessions_dir, config.events_dir, config.index_dir, config.wal_dir):
        directory.mkdir(parents=True, exist_ok=True)
    with _Layout(config) as layout:
        return _recover(layout, config, durable)


def _recover(layout: _Layout, config: JsonlStorageConfig, durable: bool) -> RecoveryReport:
    checkpoint_ids = _scan_sessions_dir(layout, durable)
    # Before the logs are read: a log may lack acknowledged lines that only the WAL holds.
    replayed = replay(
        config.wal_dir,
        layout.events,
        checkpoint_ids,
        lambda path, size, good_end: _cut_log(path, size, good_end, durable=True),
    )
    _finish_recorded_deletes(layout, replayed.deleted, checkpoint_ids, durable)
    discard_segments(config.wal_dir, replayed)
    log_ids = _ids_with_suffix(layout.events, LOG_SUFFIX)
    snapshot = _consume_snapshot(layout, durable)
    report = RecoveryReport(
        wal_segments=replayed.segments, wal_events_replayed=replayed.events_replayed
    )
    for session_id in sorted(checkpoint_ids | log_ids):
        entry = snapshot.get(session_id)
        recovered = None
        if entry is not None:
            recovered = _from_snapshot(layout, entry, session_id in checkpoint_ids)
        if recovered is not None:
            report.from_snapshot += 1
        else:
            recovered = _recover_session(
                layout, config, session_id, session_id in checkpoint_ids, report, durable
            )
        if recovered is not None:
            report.sessions.append(recovered)
    return report


def _finish_recorded_deletes(
    layout: _Layout, deleted: dict[str, str], checkpoint_ids: set[str], durable: bool
) -> None:
    """A deletion the WAL recorded, of a session still there with the same epoch, was
    interrupted before its tombstone: finish it (a re-created session of the same id has
    another epoch and stays)."""
    finished = False
    for session_id, epoch in deleted.items():
        if session_id not in checkpoint_ids:
            continue
        head = _read_head(layout, session_id)
        if head is None or not epoch or head.metadata.epoch != epoch:
            continue
        log.warning("finishing the interrupted delete of session %r", session_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.log(session_id))
        os.unlink(layout.checkpoint(session_id))
        checkpoint_ids.discard(session_id)
        finished = True
    if finished and durable:
        fsync_dir(layout.events)
        fsync_dir(layout.sessions)


def write_snapshot(config: JsonlStorageConfig, entries: list[SnapshotEntry]) -> None:
    data = _snapshot_encoder.encode(_Snapshot(SNAPSHOT_VERSION, entries))
    write_atomic(config.index_dir / SNAPSHOT_NAME, data, durable=True)


def _ids_with_suffix(directory: Path, suffix: str) -> set[str]:
    ids = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(suffix):
                session_id = name[: -len(suffix)]
                if is_valid_session_id(session_id):
                    ids.add(session_id)
                else:
                    log.warning("ignoring %s: not a valid session id", entry.path)
    return ids


def _scan_sessions_dir(layout: _Layout, durable: bool) -> set[str]:
    """Checkpoint ids; leftovers of interrupted checkpoints and deletes are dealt with."""
    checkpoint_ids: set[str] = set()
    tombstones: list[str] = []
    with os.scandir(layout.sessions) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(TMP_SUFFIX):
                # A checkpoint interrupted before its rename: the old one stands.
                os.unlink(entry.path)
            elif name.endswith(TOMBSTONE_SUFFIX):
                tombstones.append(name[: -len(TOMBSTONE_SUFFIX)])
            elif name.endswith(CHECKPOINT_SUFFIX):
                session_id = name[: -len(CHECKPOINT_SUFFIX)]
                if is_valid_session_id(session_id):
                    checkpoint_ids.add(session_id)
                else:
                    log.warning("ignoring %s: not a valid session id", entry.path)
    for session_id in tombstones:
        if is_valid_session_id(session_id) and session_id not in checkpoint_ids:
            # A delete was interrupted after its checkpoint became a tombstone: finish it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layout.log(session_id))
        os.unlink(layout.sessions / (session_id + TOMBSTONE_SUFFIX))
    if tombstones and durable:
        fsync_dir(layout.events)
        fsync_dir(layout.sessions)
    return checkpoint_ids


def _consume_snapshot(layout: _Layout, durable: bool) -> dict[str, SnapshotEntry]:
    """The snapshot's entries by id; the file is removed (durably) before anything is
    written, so a later crash can never leave a stale snapshot behind."""
    for leftover in layout.index.glob("*" + TMP_SUFFIX):
        leftover.unlink()  # a snapshot write cut short by a crash
    path = layout.index / SNAPSHOT_NAME
    data = read_file(path)
    if data is None:
        return {}
    os.unlink(path)
    if durable:
        fsync_dir(layout.index)
    try:
        snapshot = _snapshot_decoder.decode(data)
    except msgspec.DecodeError as exc:
        log.warning("ignoring the index snapshot %s: %s", path, exc)
        return {}
    if snapshot.version != SNAPSHOT_VERSION:
        return {}
    return {entry.metadata.id: entry for entry in snapshot.entries}


def _from_snapshot(
    layout: _Layout, entry: SnapshotEntry, has_checkpoint: bool
) -> RecoveredSession | None:
    """The entry, if the session's files are exactly as the snapshot saw them."""
    if not has_checkpoint or entry.log_size != entry.checkpoint_offset:
        return None
    session_id = entry.metadata.id
    stat = layout.stat_checkpoint(session_id)
    if stat is None:
        return None
    stamp = stamp_of(stat)
    if stamp != tuple(entry.checkpoint_stamp):
        return None
    log_size = layout.log_size(session_id)
    if log_size != entry.log_size and not (log_size is None and entry.log_size == 0):
        return None
    return RecoveredSession(
        entry.metadata, entry.checkpoint_seq, entry.checkpoint_offset, stamp, log_size or 0
    )


@dataclass(slots=True)
class _LogScan:
    """What a scan of (part of) a log found: the valid events and where they end."""

    first_seq: int | None = None
    last_seq: int = 0
    end: int = 0
    messages: list[tuple[int, Message]] = field(default_factory=list)
    first_ts: datetime | None = None
    last_ts: datetime | None = None


def _scan_log(path: Path, offset: int, after_seq: int, strict_start: bool) -> _LogScan:
    """Valid lines from ``offset``: consecutive seqs from ``after_seq + 1`` (or, without
    ``strict_start``, from whatever the first line holds). Stops at the first line that
    does not decode or breaks the sequence."""
    scan = _LogScan(last_seq=after_seq, end=offset)
    for end, line in iter_lines(path, offset):
        try:
            event: StoredEvent = decode_stored_event(line)
        except msgspec.DecodeError:
            break
        starts_anywhere = scan.first_seq is None and not strict_start
        if event.seq != scan.last_seq + 1 and not (starts_anywhere and event.seq >= 1):
            break
        if scan.first_seq is None:
            scan.first_seq, scan.first_ts = event.seq, event.ts
        scan.last_seq, scan.end, scan.last_ts = event.seq, end, event.ts
        if isinstance(event.event, MessageEvent):
            scan.messages.append((event.seq, event.event.message))
    return scan


def _cut_log(path: Path, size: int, good_end: int, durable: bool) -> None:
    """Cut what follows the valid lines. More than a torn last line means damage rather
    than a crash, so that part is kept aside for inspection."""
    with open(path, "rb") as f:
        f.seek(good_end)
        rest = f.read(size - good_end)
    if b"\n" in rest:
        aside = path.with_name(f"{path.name}.damaged-{os.getpid()}-{good_end}")
        log.error("log %s is damaged after byte %d; the rest is kept in %s", path, good_end, aside)
        aside.write_bytes(rest)
    truncate_file(path, good_end, durable)


def _read_head(layout: _Layout, session_id: str) -> _CheckpointHead | None:
    data = layout.read_checkpoint(session_id)
    if data is None:
        return None
    try:
        return _head_decoder.decode(data)
    except msgspec.DecodeError as exc:
        path = layout.checkpoint(session_id)
        aside = path.with_name(path.name + f".damaged-{os.getpid()}")
        log.error("checkpoint %s is unreadable (%s); moved to %s", path, exc, aside)
        os.replace(path, aside)
        return None


def _recover_session(
    layout: _Layout,
    config: JsonlStorageConfig,
    session_id: str,
    has_checkpoint: bool,
    report: RecoveryReport,
    durable: bool,
) -> RecoveredSession | None:
    head = _read_head(layout, session_id) if has_checkpoint else None
    size = layout.log_size(session_id)
    if head is None and size is None:
        return None
    if head is not None and size == head.log_offset and head.metadata.last_seq == head.last_seq:
        stamp = _checkpoint_stamp(layout, session_id)
        return RecoveredSession(head.metadata, head.last_seq, head.log_offset, stamp, size)
    if head is not None and size is None and head.last_seq == 0:
        # Created, then a crash before its (empty) log existed: nothing is missing.
        stamp = _checkpoint_stamp(layout, session_id)
        return RecoveredSession(head.metadata, 0, 0, stamp, 0)
    return _repair_session(layout, config, session_id, head, size or 0, report, durable)


def _checkpoint_stamp(layout: _Layout, session_id: str) -> FileStamp | None:
    stat = layout.stat_checkpoint(session_id)
    return None if stat is None else stamp_of(stat)


def _repair_session(
    layout: _Layout,
    config: JsonlStorageConfig,
    session_id: str,
    head: _CheckpointHead | None,
    size: int,
    report: RecoveryReport,
    durable: bool,
) -> RecoveredSession:
    """Bring the checkpoint up to date with the log (cutting a torn tail) and rewrite it."""
    log_path = layout.log(session_id)
    checkpoint = _read_full_checkpoint(layout, session_id) if head is not None else None
    scan = _scan_after_checkpoint(log_path, checkpoint, size)
    if size > scan.end:
        _cut_log(log_path, size, scan.end, durable)
        report.torn_lines_cut += 1
    metadata, messages = _merge(config, session_id, checkpoint, scan, report)
    saved = Checkpoint(metadata, messages, metadata.last_seq, scan.end)
    stat = write_atomic(layout.checkpoint(session_id), encode_checkpoint(saved), durable)
    report.checkpoints_repaired += 1
    return RecoveredSession(metadata, saved.last_seq, saved.log_offset, stamp_of(stat), scan.end)


def _scan_after_checkpoint(log_path: Path, checkpoint: Checkpoint | None, size: int) -> _LogScan:
    """The log's valid lines: from the checkpoint's offset when the log continues there,
    else (the log is shorter, or the line there does not follow) from the start."""
    covered_seq = checkpoint.last_seq if checkpoint else 0
    covered_offset = checkpoint.log_offset if checkpoint else 0
    if size == covered_offset:
        return _LogScan(last_seq=covered_seq, end=covered_offset)
    if size > covered_offset:
        scan = _scan_log(log_path, covered_offset, covered_seq, strict_start=True)
        if scan.first_seq is not None:
            return scan
    # Also the case of a torn line right at the offset: the full scan then ends there.
    return _scan_log(log_path, 0, 0, strict_start=False) if size else _LogScan()


def _read_full_checkpoint(layout: _Layout, session_id: str) -> Checkpoint | None:
    data = read_file(layout.checkpoint(session_id))
    return None if data is None else decode_checkpoint(data)


def _merge(
    config: JsonlStorageConfig,
    session_id: str,
    checkpoint: Checkpoint | None,
    scan: _LogScan,
    report: RecoveryReport,
) -> tuple[SessionMetadata, list[Message]]:
    """The session as checkpoint plus log tail say it is."""
    if checkpoint is None:
        metadata = _orphan_metadata(config, session_id, scan)
        messages = [message for _, message in scan.messages]
    else:
        covered = checkpoint.last_seq
        metadata = checkpoint.metadata
        messages = list(checkpoint.messages)
        messages.extend(message for seq, message in scan.messages if seq > covered)
        reaches = scan.last_seq >= covered
        starts_in_time = scan.first_seq is None or scan.first_seq <= covered + 1
        if not (reaches and starts_in_time):
            # The log lost history the checkpoint had seen (or was replaced): the seqs
            # clients hold no longer mean the same events, which a new epoch says.
            log.warning(
                "session %r: its log holds seqs %s..%d but its checkpoint covers seq %d; "
                "starting a new epoch",
                session_id,
                scan.first_seq,
                scan.last_seq,
                covered,
            )
            metadata.epoch = new_epoch()
            report.epochs_renewed += 1
    metadata.last_seq = scan.last_seq
    metadata.message_count = len(messages)
    if scan.last_ts is not None and scan.last_ts > metadata.last_activity_at:
        metadata.touch(scan.last_ts)
    return metadata, messages


def _orphan_metadata(
    config: JsonlStorageConfig, session_id: str, scan: _LogScan
) -> SessionMetadata:
    log.warning("session %r has an event log but no checkpoint; recovered from the log", session_id)
    metadata = SessionMetadata(id=session_id, ttl=config.default_ttl)
    if scan.first_ts is not None:
        metadata.created_at = scan.first_ts
    metadata.touch(scan.last_ts or metadata.created_at)
    return metadata
