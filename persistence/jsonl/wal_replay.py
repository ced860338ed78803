"""Replay of the shared WAL (``wal.py``) at open, after a crash left segments behind.

``replay``, at open, before the index is built: the records of all remaining
segments, in order. A line with zero bytes is ignored: pages a crash left unwritten in
its last commit, never synced. If a later commit's record follows it (``wal_evidence.py``),
or a whole line without zeros does not decode or fails its CRC, or
a session's records then skip seqs (``wal_evidence.py``), it was damage instead, and the
segments are kept aside. A later record of a session starting at seq s replaces
whatever earlier records held from s on (a failed batch's seqs are reused by the next
one), and a deletion forgets the session's earlier records, unless a cancellation of it
follows (a delete that failed after its deletion was recorded: they count again, and
open does not finish that delete). Then for each session that
still has a checkpoint, the log's valid lines are found from the offset of the first
seq the segments hold; lines past the last seq the segments hold were written by a
batch whose record never made it, so they were never acknowledged and are cut
(``repair.py``: an ordinary crash, logged at info level; kept when the WAL is damaged);
and the missing lines are appended from the segments, gap-free. Seqs the WAL
acknowledged but cannot restore are reported (``unrestored``: open starts a new epoch
for the session). Then every log the segments cover is synced, whether replay wrote to
it or not (after a kill -9 its lines may sit in the page cache alone), through the
descriptor replay wrote it through (at most ``HELD_MAX`` held at once), and only then
are the segments deleted; the lines a log already held are written again before
that sync (a sync that failed in the process before may have left them in the page
cache only, where a sync now would write nothing). A record's fields outside its CRC
(its seq, its offset) are checked against its lines and the log first
(``wal_fields.py``).

Everything here blocks; it runs in worker threads.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec

from . import damaged_wal
from .files import close_all, file_expected, fsync_dir, pwrite_all, rewrite_range, sync_and_close
from .layout import Layout
from .repair import cut_tail
from .scan import READ_CHUNK, raw_lines, valid_lines
from .wal import ReadRecord, decode_record
from .wal_evidence import GARBLED, UNWRITTEN, Holes, Lost, Pending
from .wal_fields import first_seq_held, fits_log

log = logging.getLogger(__name__)

# Replayed logs held open at once for their syncs: a bound on descriptors, whatever
# the number of sessions the segments cover.
HELD_MAX = 64


@dataclass(slots=True)
class ReplayReport:
    segments: int = 0
    events_replayed: int = 0
    logs_cut: int = 0
    records_ignored: int = 0
    damaged: int = 0  # logs with damage kept aside (not an unacknowledged tail)
    # A log had lost lines the WAL no longer covers, or the WAL was damaged: the
    # segments are kept aside for an operator (``discard_segments``).
    segments_kept: bool = False
    # Sessions whose last record is their deletion, with the epoch deleted: a delete
    # that may not have finished, for open to finish if the session is still that one.
    deleted: dict[str, str] = field(default_factory=dict)
    # Sessions whose log could not be brought up to the last seq the WAL acknowledged,
    # with that seq: open starts a new epoch for them, so no seq is issued twice.
    unrestored: dict[str, int] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)  # the segments replayed
    kept_aside: list[Path] = field(default_factory=list)  # their names once kept aside


def discard_segments(layout: Layout, report: ReplayReport) -> None:
    """Deletes the replayed segments, once open has acted on everything they said.
    When a log had lost lines they no longer cover, or they were damaged, they are
    kept aside instead (``<n>.wal.damaged-<pid>-<ns>``, listed by ``damaged_files``) for an
    operator: left in the WAL, the next open would replay them again, and their last
    seqs would cut every line appended since. (Bounded in number and bytes, the
    oldest removed first: ``damaged_wal.py``.)"""
    if not report.paths:
        return
    # The time in a kept-aside name orders them for the bound (``damaged_wal.py``), oldest
    # removed first: past every earlier one's, even when the clock went back since, or
    # this open's would be the first removed, and could take an earlier one's name.
    stamp = max(time.time_ns(), damaged_wal.newest_stamp(layout) + 1)
    for path in report.paths:
        if report.segments_kept:
            aside = layout.damaged(path, f"{os.getpid()}-{stamp}")
            os.rename(path, aside)
            report.kept_aside.append(aside)
            report.damaged += 1
            log.warning("WAL segment %s set aside as %s", path, aside)
        else:
            os.unlink(path)
    fsync_dir(layout.wal)


def _records(path: Path, report: ReplayReport) -> Iterator[ReadRecord | Lost]:
    """The segment's whole records, and a :class:`Lost` for each one lost: a line with
    zero bytes, or one that does not decode or fails its CRC."""
    size = os.stat(path).st_size
    end = 0
    with open(path, "rb") as file:
        for start, end, raw in raw_lines(file, 0):
            if b"\0" in raw:
                # A record never holds a zero byte: these are pages a crash left
                # unwritten in the last commit, never synced (the room allocated ahead,
                # or a file extended but not written, reads as zeros). What follows may
                # be whole records of the same commit (other sessions' shares): replayed,
                # as any whole record is. Zeros amid synced records are damage instead:
                # they show as a later commit's record after them (``wal_evidence.py``), or as
                # a session whose records skip seqs (``wal_evidence.py``).
                report.records_ignored += 1
                log.info("WAL segment %s: ignoring a line with zero bytes at byte %d", path, start)
                yield UNWRITTEN
                continue
            try:
                record = decode_record(raw)
            except msgspec.DecodeError:
                report.records_ignored += 1
                log.error("WAL segment %s: a record before byte %d does not decode", path, end)
                yield GARBLED  # damage: a crash leaves zeros, not this
                continue
            if record.of_lines:
                data = b"".join([bytes(line) + b"\n" for line in record.lines])
                if not record.lines or zlib.crc32(data) != record.crc:
                    report.records_ignored += 1
                    log.error("WAL segment %s: a record before byte %d fails its CRC", path, end)
                    yield GARBLED
                    continue
            yield record
        if size > end and not _zeros_from(file, end):
            report.records_ignored += 1  # a torn last record: never acknowledged
            log.info("WAL segment %s: ignoring a torn last record (%d bytes)", path, size - end)


def _zeros_from(file: BinaryIO, offset: int) -> bool:
    """Whether ``file`` holds only zeros from ``offset`` on: the room allocated ahead
    of the records (``wal.py``), where the records end cleanly."""
    file.seek(offset)
    while chunk := file.read(READ_CHUNK):
        if chunk.count(0) != len(chunk):
            return False
    return True


def replay(
    layout: Layout, has_checkpoint: set[str], replaced: frozenset[str] | set[str] = frozenset()
) -> ReplayReport:
    """Bring every session log up to what the remaining segments hold (then
    :func:`discard_segments` deletes them). ``has_checkpoint``: the sessions that exist
    (a deleted one must not come back); ``replaced``: those whose replacement the open
    finishes (the old one's files gone, maybe before its deletion was recorded)."""
    report = ReplayReport()
    segments = layout.segments()
    if not segments:
        return report
    pending: dict[str, Pending] = {}
    # What a deletion took from ``pending``, until its cancellation puts it back (or a
    # record of a new session of the id shows it was not cancelled).
    set_aside: dict[str, Pending | None] = {}
    holes = Holes()
    for number, path in segments:
        report.segments += 1
        for record in _records(path, report):
            if isinstance(record, Lost):
                holes.hole(number, record)
                continue
            holes.record(number, record)
            if record.deleted:
                set_aside[record.sid] = pending.pop(record.sid, None)
                report.deleted[record.sid] = record.epoch
                continue
            if record.undeleted:
                if record.sid in report.deleted and report.deleted[record.sid] == record.epoch:
                    del report.deleted[record.sid]
                    restored = set_aside.pop(record.sid, None)
                    if restored is not None:
                        pending[record.sid] = restored
                continue
            report.deleted.pop(record.sid, None)
            set_aside.pop(record.sid, None)
            entry = pending.get(record.sid)
            if entry is None:
                entry = pending[record.sid] = Pending()
            lines_of = [bytes(line) for line in record.lines]
            seq = first_seq_held(record.sid, record.seq, lines_of[0])
            if seq != record.seq:
                report.segments_kept = True
            entry.add(seq, record.off, lines_of)
    if holes.damage_in:
        log.error(
            "WAL segment %d: a lost record (zero bytes, or one that does not decode) is "
            "followed by a later commit's record, or a line without zeros does not decode: "
            "damaged, not cut short by a crash; log "
            "lines past the WAL are kept, and the WAL segments are kept aside",
            holes.damage_in,
        )
        report.segments_kept = True
    # A session's records are followed by its deletion's, if it went: records of one
    # with no checkpoint and none are of an id damaged outside their CRC, whose own
    # session's lines then looked unacknowledged (r499: cut, and acknowledged again).
    if orphans := sorted(set(pending) - has_checkpoint - replaced):
        log.error(
            "WAL records of sessions with no checkpoint and no deletion after them "
            "(%s): damaged ids; log lines past the WAL are kept, and the WAL segments "
            "are kept aside",
            ", ".join(map(repr, orphans[:5])),
        )
        report.segments_kept = True
    keep_tail = bool(holes.damage_in or orphans)
    held: list[tuple[str, int]] = []  # replayed logs' descriptors, to sync through
    try:  # (closed whatever happens: an open that fails may be tried again)
        for session_id in sorted(pending):
            entry = pending[session_id]
            if entry.skipped_to:
                log.error(
                    "session %r: the WAL lacks a record before seq %d, which a later "
                    "commit holds: damaged, not cut short by a crash; the WAL segments "
                    "are kept aside",
                    session_id,
                    entry.skipped_to,
                )
                report.segments_kept = True
            if session_id in has_checkpoint and entry.lines:
                fd = _replay_session(layout, session_id, entry, report, keep_tail)
                if fd is not None:
                    held.append((session_id, fd))
                if len(held) >= HELD_MAX:
                    sync_and_close(held)
    except BaseException:
        close_all(held)
        raise
    # Every covered log, not only those replay appended to: the lines a log already held
    # may be in the page cache only (a process crash). Synced before the segments go,
    # each through the descriptor replay wrote it through (``logfiles.py``: a later
    # one may not be told of a write-back error).
    sync_and_close(held)
    if report.events_replayed or report.logs_cut:
        fsync_dir(layout.events)
    report.paths = [path for _number, path in segments]
    if report.events_replayed:
        log.warning(
            "replayed %d events from %d WAL segments into the session logs",
            report.events_replayed,
            report.segments,
        )
    return report


def _replay_session(
    layout: Layout, session_id: str, pending: Pending, report: ReplayReport, keep_tail: bool
) -> int | None:
    """Cut and complete the session's log; the descriptor it was written through, open
    for the sync (none when there is no log and nothing to write)."""
    path = layout.log(session_id)
    try:
        found = os.stat(path)
    except FileNotFoundError:
        size = -1
    else:
        file_expected(found, path)
        size = found.st_size
    first = min(pending.lines)
    first_offset = pending.lines[first][0]
    if 0 <= first_offset <= size and not fits_log(path, first_offset, first):
        # A record's seq and offset are outside its CRC: one damaged said a line the
        # log holds whole was where its own begins, and replay cut the synced lines
        # from there. The log is read from its start instead; the WAL's lines it lacks
        # are appended after its last, as always.
        log.error(
            "session %r: the WAL says seq %d begins at byte %d of its log, where the log "
            "holds another line; the WAL is damaged: the log is read from its start, and "
            "the WAL segments are kept aside",
            session_id,
            first,
            first_offset,
        )
        report.segments_kept = True
        first, first_offset = 1, 0
    # Everything before the first seq the segments hold was synced before an older
    # segment was deleted: scan from there. If the log is shorter, scan it all.
    if 0 <= first_offset <= size:
        # Lines past the WAL's last seq for this session were written by a batch whose
        # WAL record never made it: never acknowledged, so cut (a batch is all or none).
        # Unless the WAL is damaged: then a lost record may have acknowledged them.
        upto = None if keep_tail else pending.last
        last, end = valid_lines(path, first_offset, first - 1, upto_seq=upto)
    else:
        # Lines a deleted segment had covered are gone: data was lost below the WAL's
        # reach. Say so, and keep the segments as evidence.
        log.error(
            "session %r: its log (%d bytes) is shorter than the WAL's first offset %d; "
            "acknowledged events before seq %d were lost; the WAL segments are kept aside",
            session_id,
            size,
            first_offset,
            first,
        )
        report.segments_kept = True
        last, end = valid_lines(path, 0, 0) if size > 0 else (0, 0)
    if size > end:
        cut = cut_tail(layout, path, size, end, last)
        report.logs_cut += 1
        report.damaged += cut.damaged is not None
    # What the log holds of the WAL's lines is written again before the sync below,
    # which the segments' deletion trusts: read back, it may be the page cache's only,
    # after a sync that failed in the process before (``files.rewrite_range``).
    start = first_offset if 0 <= first_offset <= size else 0
    missing = []
    seq = last + 1
    while (entry := pending.lines.get(seq)) is not None:
        missing.append(entry[1] + b"\n")
        seq += 1
    if seq <= pending.last:
        log.error(
            "session %r: acknowledged seqs %d..%d are not in its log and the WAL cannot "
            "restore them (it lacks seq %d); the WAL segments are kept aside, and the "
            "session starts a new epoch",
            session_id,
            seq,
            pending.last,
            seq,
        )
        report.unrestored[session_id] = pending.last
        report.segments_kept = True
    if size < 0 and not missing:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if end > start:  # (no log at all: nothing to write again)
            rewrite_range(fd, start, end)
        if missing:  # unsynced: ``replay`` syncs every log the segments cover
            pwrite_all(fd, b"".join(missing), os.fstat(fd).st_size)
    except BaseException:
        os.close(fd)
        raise
    if missing:
        report.events_replayed += len(missing)
        log.warning("session %r: restored seqs %d..%d from the WAL", session_id, last + 1, seq - 1)
    return fd
