"""Opening a JSONL store: repair what a crash left, convert the old format, and find
every session.

A crash can leave, per session:
- log lines the checkpoint does not cover yet (appends since the last checkpoint): read
  (their heads only) to bring the metadata up to date; the checkpoint follows later;
- a last line cut short, or lines never acknowledged (``repair.py``): cut;
- a log without a checkpoint: recovered as a session with default metadata;
- a checkpoint whose log is missing or shorter than it says: the history is lost, so the
  session gets a new ``epoch`` and ``last_seq`` becomes what the log really holds;
- a checkpoint of no events without its log (a create cut short between its two
  writes): a valid empty session; like one whose log was lost, it gets its empty log
  made (durably), so that no reader or writer after the open finds no file;
- a ``.tmp`` file (a checkpoint being written): removed, the old checkpoint stands;
- a ``.deleted`` tombstone (a delete in progress): the delete is finished; one that
  cannot be (something stands in the way: a directory where a file must go, a file the
  system does not let go) is logged and counted (``RecoveryReport.deletes_unfinished``),
  and the open goes on: the session stays (its rename had failed) or stays deleted (the
  tombstone kept for the next open to try again), never the whole store unopened;
- a ``.json.replacing`` checkpoint (a create replacing an expired session,
  ``lifecycle.py``): the old session's files go, with whatever the WAL holds of them,
  and the new session takes their place once the segments are gone (so a crash
  during this open finishes it the same way at the next);
- WAL segments (``wal/``, ``fsync`` mode): acknowledged lines a log may lack (its tail
  was never synced) are replayed into it from the segments, before anything else reads
  the logs, for every session that still has a checkpoint; then the segments are
  deleted (``wal.py``).

A checkpoint in the old format (metadata and every message in one JSON file) is
converted: its messages that the log does not hold become the preamble, the message
index is built from the log, and a new checkpoint replaces it (``checkpoint.py``).

Fast start: the index snapshot of a clean close (``snapshot.py``) stands in for every
checkpoint whose files are as it saw them.

Read-only (``config.read_only``): the same reading, with nothing written, cut, removed
or replayed: a best-effort view of the store as its files are now.

Everything here blocks; the storage runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from bamboo_session.protocol.models import SessionMetadata

from . import checkpoint, damaged_wal, deletes, lifecycle, snapshot, wal_replay
from .checkpoint import CheckpointDamaged, LegacyCheckpoint
from .config import JsonlStorageConfig
from .files import fsync_dir, unlink_quietly
from .layout import (
    CHECKPOINT_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    PREAMBLE_SUFFIX,
    REPLACEMENT_SUFFIX,
    TMP_SUFFIX,
    TOMBSTONE_SUFFIX,
    Layout,
    format_2_name,
)
from .session_recovery import Directories, RecoveredSession, RecoveryReport, SessionRecovery

__all__ = ["RecoveredSession", "RecoveryReport", "recover"]

log = logging.getLogger(__name__)


def recover(config: JsonlStorageConfig) -> RecoveryReport:
    """Repair the store (unless read-only) and return every session in it."""
    layout = config.layout
    if not config.read_only:
        for directory in layout.directories():
            directory.mkdir(parents=True, exist_ok=True)
    dirs = Directories(layout)
    try:
        return _Recovery(config, dirs).run()
    finally:
        dirs.close()


class _Recovery:
    def __init__(self, config: JsonlStorageConfig, dirs: Directories) -> None:
        self.config = config
        self.layout = config.layout
        self.dirs = dirs
        self.writable = not config.read_only
        self.report = RecoveryReport()
        self.sessions = SessionRecovery(config, dirs, self.report)

    def run(self) -> RecoveryReport:
        checkpoint_ids, deleted = self._scan_sessions_dir()
        replaced = self._clear_replaced(checkpoint_ids) if self.writable else set()
        unrestored: dict[str, int] = {}
        replayed: wal_replay.ReplayReport | None = None
        if self.writable:
            # Before the logs are read: a log may lack acknowledged lines only the WAL holds.
            replayed = wal_replay.replay(self.layout, checkpoint_ids, replaced)
            unrestored = replayed.unrestored
            deleted |= self._finish_recorded_deletes(replayed.deleted, checkpoint_ids)
            self.report.wal_segments = replayed.segments
            self.report.wal_events_replayed = replayed.events_replayed
            self.report.torn_lines_cut += replayed.logs_cut - replayed.damaged
        elif segments := self.layout.segments():
            log.info(
                "read-only: %d WAL segments are not replayed; events they hold that a log "
                "lacks are not in this view",
                len(segments),
            )
        log_ids, index_ids = _ids(self.layout, LOG_SUFFIX, INDEX_SUFFIX)
        log_ids -= deleted
        if self.writable:
            # (A deleted session's were tried with its other files: logged once, if they stay.)
            strays = index_ids - log_ids - checkpoint_ids - deleted
            self._remove_strays(strays, self.layout.message_index)
        entries = snapshot.consume(self.layout, read_only=not self.writable)
        without_log = []
        for session_id in sorted(checkpoint_ids | log_ids):
            entry = entries.get(session_id)
            found = None
            acknowledged = unrestored.get(session_id, 0)
            if entry is not None and session_id in checkpoint_ids and not acknowledged:
                found = self.sessions.from_snapshot(entry)
            if found is not None:
                self.report.from_snapshot += 1
            else:
                has_checkpoint = session_id in checkpoint_ids
                found = self.sessions.recover(session_id, has_checkpoint, acknowledged)
            if found is not None:
                self.report.sessions.append(found)
                if session_id not in log_ids:
                    without_log.append(session_id)
        if self.writable and without_log:
            self._create_empty_logs(without_log)
        if replayed is not None:
            # Only now: the new epoch of a session whose acknowledged seqs are lost is in
            # its checkpoint. A crash before this replays the segments again; after it,
            # nothing else would tell the next open that those seqs were ever issued.
            wal_replay.discard_segments(self.layout, replayed)
            self.report.damaged += replayed.damaged
            # At every open that may write, not only one that kept segments aside: the
            # bound holds for those a store of an older version kept too.
            removed = damaged_wal.bound_kept_aside(
                self.layout,
                self.config.wal_damaged_max_count,
                self.config.wal_damaged_max_bytes,
                replayed.kept_aside,
            )
            self.report.wal_damaged_removed = len(removed)
        for session_id in sorted(replaced):
            lifecycle.install_replacement(self.layout, session_id)
            found = self.sessions.recover(session_id, True, 0)
            if found is not None:
                self.report.sessions.append(found)
        return self.report

    # -- directories --------------------------------------------------------------------

    def _scan_sessions_dir(self) -> tuple[set[str], set[str]]:
        """Checkpoint ids, and ids whose delete was under way; leftovers of interrupted
        checkpoints and deletes are dealt with (when writable)."""
        checkpoint_ids, tombstones, preambles = set(), set(), set()
        id_with_suffix = self.layout.id_with_suffix
        with os.scandir(self.layout.sessions) as entries:
            for entry in entries:
                name = entry.name
                # The common case first: 100,000s of these at an open.
                if (session_id := id_with_suffix(name, CHECKPOINT_SUFFIX)) is not None:
                    checkpoint_ids.add(session_id)
                elif name.endswith(TMP_SUFFIX):
                    if self.writable:  # a write cut short before its rename
                        os.unlink(entry.path)
                elif (session_id := id_with_suffix(name, TOMBSTONE_SUFFIX)) is not None:
                    tombstones.add(session_id)
                elif (session_id := id_with_suffix(name, PREAMBLE_SUFFIX)) is not None:
                    preambles.add(session_id)
                elif name.endswith(CHECKPOINT_SUFFIX) and not _old_name(self.layout, entry):
                    log.warning("ignoring %s: not a valid session id", entry.path)
        deleted = tombstones - checkpoint_ids
        if self.writable:
            for session_id in sorted(tombstones):
                if session_id in deleted:  # the checkpoint became the tombstone: finish
                    self._finish_delete(session_id)
                else:  # a delete that failed at its rename, or a stale tombstone
                    self._remove_tombstone(session_id)
            self._remove_strays(preambles - checkpoint_ids, self.layout.preamble)
            if tombstones:
                fsync_dir(self.layout.events)
                fsync_dir(self.layout.sessions)
        return checkpoint_ids, deleted

    def _clear_replaced(self, checkpoint_ids: set[str]) -> set[str]:
        """The sessions a create was replacing: the old one's files removed (and the
        id out of ``checkpoint_ids``: the WAL's records of it are not replayed); the
        new checkpoint is put in place at the end of the open."""
        replaced = set()
        with os.scandir(self.layout.sessions) as entries:
            for entry in entries:
                session_id = self.layout.id_with_suffix(entry.name, REPLACEMENT_SUFFIX)
                if session_id is not None:
                    replaced.add(session_id)
        for session_id in replaced:
            log.warning("finishing the interrupted replacement of session %r", session_id)
            for path in self.layout.session_files(session_id):
                unlink_quietly(path)
            unlink_quietly(self.layout.checkpoint(session_id))
            checkpoint_ids.discard(session_id)
        if replaced:
            fsync_dir(self.layout.events)
            fsync_dir(self.layout.sessions)
        return replaced

    def _remove_strays(self, session_ids: set[str], path_of: Callable[[str], Path]) -> None:
        """Derived files whose session is gone (a delete cut short)."""
        for session_id in session_ids:
            try:
                unlink_quietly(path_of(session_id))
            except OSError as exc:  # in no session's way: it stays, and the open goes on
                log.warning("could not remove %s, of no session: %s", path_of(session_id), exc)

    def _create_empty_logs(self, session_ids: list[str]) -> None:
        """Sessions recovered from a checkpoint whose log is not there: a create cut
        short between its two writes (or a log lost, which ``recover`` reported and
        gave a new epoch): each is empty now (last seq 0), and gets its empty log,
        durably, so that every reader and writer after the open finds the file of an
        empty session (read-only, none is made: nothing reads the log of a session
        with no events)."""
        # No O_TRUNC: the open never shortens a file it did not read.
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        for session_id in session_ids:
            log.info("session %r: its checkpoint had no log; an empty one is made", session_id)
            try:
                os.close(os.open(self.layout.log(session_id), flags, 0o644))
            except OSError as exc:  # one session's trouble (no room, no right): not the open's
                log.warning("session %r: its empty log could not be made: %s", session_id, exc)
        fsync_dir(self.layout.events)

    # -- deletes a crash or a failure left ----------------------------------------------
    # One session's obstacle (a directory where a file must go, a file the system will
    # not remove) is logged and counted, and the open goes on: it fails no other session.

    def _finish_delete(self, session_id: str) -> None:
        """The session's checkpoint is its tombstone: the delete took effect; its files
        go (the tombstone stays while one of them does, for the next open)."""
        failed = deletes.finish_delete(self.layout, session_id)
        for path, exc in failed:
            log.error(
                "session %r is deleted, but %s could not be removed (%s): its tombstone "
                "stays, and the next open tries again",
                session_id,
                path,
                exc,
            )
        self.report.deletes_unfinished += bool(failed)

    def _remove_tombstone(self, session_id: str) -> None:
        """A tombstone beside the session's checkpoint: its delete failed (or the id was
        created again after one), so the session stays as its checkpoint says."""
        tombstone = self.layout.tombstone(session_id)
        try:
            unlink_quietly(tombstone)
        except OSError as exc:
            log.error(
                "session %r: %s stands where its delete puts the checkpoint and cannot be "
                "removed (%s); the session stays readable, and a delete of it fails until "
                "that is removed",
                session_id,
                tombstone,
                exc,
            )
            self.report.deletes_unfinished += 1

    def _finish_recorded_deletes(
        self, deleted: dict[str, str], checkpoint_ids: set[str]
    ) -> set[str]:
        """A deletion the WAL recorded, of a session still there with the same epoch,
        was interrupted before its tombstone: finish it as a delete does (a re-created
        session of the same id has another epoch and stays); the ids finished. One
        whose checkpoint cannot become the tombstone stays, whole (its delete was never
        answered: the crash came first)."""
        finished = set()
        for session_id, epoch in deleted.items():
            if session_id not in checkpoint_ids or not epoch:
                continue
            metadata = self._metadata_only(session_id)
            if metadata is None or metadata.epoch != epoch:
                continue
            log.warning("finishing the interrupted delete of session %r", session_id)
            try:
                os.replace(self.layout.checkpoint(session_id), self.layout.tombstone(session_id))
            except OSError as exc:
                log.error(
                    "session %r stays: its interrupted delete cannot be finished, as its "
                    "checkpoint cannot become %s (%s)",
                    session_id,
                    self.layout.tombstone(session_id),
                    exc,
                )
                self.report.deletes_unfinished += 1
                continue
            fsync_dir(self.layout.sessions)
            self._finish_delete(session_id)
            checkpoint_ids.discard(session_id)
            finished.add(session_id)
        if finished:
            fsync_dir(self.layout.events)
            fsync_dir(self.layout.sessions)
        return finished

    def _metadata_only(self, session_id: str) -> SessionMetadata | None:
        read = self.dirs.read_checkpoint(session_id)
        if read is None:
            return None
        with contextlib.suppress(CheckpointDamaged):
            found = checkpoint.parse(read[0], session_id)
            if isinstance(found, LegacyCheckpoint):
                return found.metadata
            return found.checkpoint.metadata
        return None

    # -- one session ----------------------------------------------------------------------


def _ids(layout: Layout, *suffixes: str) -> list[set[str]]:
    """The session ids of the files in the event directory with each suffix."""
    found: list[set[str]] = [set() for _ in suffixes]
    id_with_suffix = layout.id_with_suffix
    with os.scandir(layout.events) as entries:
        for entry in entries:
            name = entry.name
            for ids, suffix in zip(found, suffixes, strict=True):
                if name.endswith(suffix):
                    session_id = id_with_suffix(name, suffix)
                    if session_id is not None:
                        ids.add(session_id)
                    else:
                        _old_name(layout, entry)
                    break
    return found


def _old_name(layout: Layout, entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` has the name format 1 gave a session's file, in a store of
    format 2 (a copy from an older version's store, a backup restored): not read, and
    said, with the name that would have it read."""
    new = format_2_name(entry.name) if layout.case_folded else None
    if new is not None:
        log.warning(
            "ignoring %s: a name of store format 1 (from an older version's store?) in a "
            "store of format 2, which names it %s: rename it so, with no server running, "
            "to have it read",
            entry.path,
            new,
        )
    return new is not None
