"""One group commit of the log writer, in three steps that the writer's task runs one
after the other (so the files and the WAL segment have one user at a time):

- ``write``: each session's share of the batch goes to its log with one ``write``, and
  the batch's WAL records to the current segment with one more. A small batch
  (``on_loop``: up to 64 KiB, every log of it open already, no earlier failure to cut
  first) is written from the event loop's thread: a write to the page cache costs
  microseconds, less than a hand-off to a thread and back. Any other is written and
  finished on the writer's I/O thread in one hand-off (``write_and_finish``), so that
  a disk that throttles writers, or an ``open()`` that hangs (a hung disk, a network
  filesystem), stalls that thread and the appends behind it, never the loop.
- ``finish``, only when something blocks: the WAL's sync (in the common commit, by the
  sync helper process: see ``writer.py``), or on the I/O thread the WAL's records
  written after a new segment is started or room is allocated ahead in it (``wal.py``),
  every written log synced (``fsync`` without the WAL), and whatever failed cut
  back to the log's last good size, so that no torn or unacknowledged line survives a
  failed append. In ``os`` mode a batch that did not fail has nothing to finish.
- ``conclude``, on the loop's thread: what succeeded may be acknowledged; whatever
  failed and could not be cut back is marked to be cut before its file's next write;
  the descriptors of cut-back, deleted and least recently used logs are closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Final

from .batch import Commit, Forget, Group
from .config import Durability
from .files import of_its_own, write_all
from .logfiles import LogFiles
from .wal import Segment, SegmentFile, encode_deleted, encode_lines, encode_undeleted

log = logging.getLogger(__name__)

LOOP_WRITE_BYTES: Final = 64 * 1024


class Committer:
    """The steps of a group commit over the writer's files and WAL segment."""

    def __init__(self, files: LogFiles, wal: SegmentFile | None, durability: Durability) -> None:
        self.files = files
        self.wal = wal
        self._durability = durability
        self.rotated: list[Segment] = []  # WAL segments left behind, for retirement

    def on_loop(self, groups: list[Group]) -> bool:
        """Whether ``write`` may run on the loop's thread: a small batch to logs that
        are open (opening one may block), and nothing an earlier failure left to cut
        first (a cut syncs)."""
        size, open_logs, needs_truncate = 0, self.files.open_logs, self.files.needs_truncate
        for group in groups:
            if group.session_id not in open_logs or group.session_id in needs_truncate:
                return False
            for batch in group.batches:
                size += len(batch.data)
        return size <= LOOP_WRITE_BYTES

    def cut_again(self, forgets: Sequence[Forget]) -> None:
        """A session back from a failed delete: failed lines a failed cut left in its log
        are cut before its next write again (its deletion dropped that cut)."""
        for forget in forgets:
            if forget.cancel and forget.uncut:
                self.files.needs_truncate.setdefault(forget.session_id, forget.cut_to)
                self.files.uncut.setdefault(forget.session_id, forget.uncut)

    def write(self, commit: Commit) -> None:
        """The first step: the lines and the WAL records to the page cache."""
        try:
            for group in commit.groups:
                batches = group.batches
                if len(batches) == 1:  # most groups: one append to the session
                    group.data = batches[0].data
                else:
                    group.data = b"".join([batch.data for batch in batches])
                self._write_group(group, commit)
            if self._durability == "fsync" and self.wal is None:
                commit.sync_logs = bool(commit.written)
            else:  # synced later: the WAL's retirement, or ``os`` mode's rounds
                for group in commit.written:
                    assert group.open_log is not None
                    group.open_log.unsynced = True
            if self.wal is not None:
                self._write_wal(self.wal, commit)
        except Exception:
            # Unexpected (a bug, MemoryError): whatever was written is cut away.
            log.exception("log writer failed")
            commit.failed = True

    def write_and_finish(self, commit: Commit) -> None:
        """Both steps at once, on the I/O thread, for a batch too large for the loop:
        one hand-off, and its sync right there."""
        self.write(commit)
        if commit.blocks:
            self.finish(commit)

    def finish(self, commit: Commit) -> None:
        """The blocking step, on the I/O thread: the WAL synced (after starting a new
        segment if due), or every written log (``fsync`` without the WAL); whatever
        failed cut back. Touches descriptors, never the LRU of open logs."""
        try:
            if commit.failed:
                return  # the finally below cuts everything back
            if self.wal is not None:
                self._commit_wal(self.wal, commit)
            elif commit.sync_logs:
                self.files.sync_logs(commit)
        except Exception:
            commit.failed = True
            raise
        finally:
            if commit.failed:
                if self.wal is not None and commit.wal_before is not None:
                    self.wal.cut_back(commit.wal_before)
                _fail(commit, None)
            for group in commit.cuts:
                self.files.cut_back(group)
            commit.cut_done = True

    def conclude(self, commit: Commit) -> None:
        """The last step, on the loop's thread; never raises, so that every append of
        the batch is settled whatever happens here."""
        wal = self.wal
        touched = wal.current.touched if wal is not None and wal.current else None
        for group in commit.written:
            group.ok = group.error is None and not commit.failed
            if group.ok and touched is not None:
                touched.add(group.session_id)
        if commit.failed and not commit.cut_done:
            # ``finish`` never ran (its thread could not start, or it was cancelled):
            # what the batch wrote is cut before its file's next write.
            _fail(commit, None)
            for group in commit.cuts:
                self.files.needs_truncate.setdefault(group.session_id, group.size_before)
                self.files.uncut.setdefault(group.session_id, len(group.data))  # at most
            if wal is not None and commit.wal_before is not None:
                wal.needs_truncate = commit.wal_before
        for group in commit.cuts:
            self.files.drop(group)
        for forget in commit.forgets:
            if not forget.cancel:  # a session back from a failed delete keeps its file
                self.files.forget(forget.session_id)
        if len(self.files.open_logs) > self.files.max_open:
            self.files.trim()

    def _write_group(self, group: Group, commit: Commit) -> None:
        """Write one file's lines; a failure is recorded, and cut back by ``finish``."""
        open_logs = self.files.open_logs
        open_log = open_logs.get(group.session_id)
        if open_log is not None:  # open already (always, for a batch on the loop)
            open_logs.move_to_end(group.session_id)
        else:
            try:
                open_log = self.files.open(group.session_id)
            except OSError as exc:
                group.error = exc
                group.alone = of_its_own(exc, self.files.path(group.session_id))
                return
        group.open_log, group.size_before = open_log, open_log.size
        try:
            write_all(open_log.fd, group.data)
        except OSError as exc:
            group.error, group.alone = exc, of_its_own(exc)
            commit.cuts.append(group)
            return
        open_log.size = group.size_before + len(group.data)
        group.new_size = open_log.size
        commit.written.append(group)

    def _write_wal(self, wal: SegmentFile, commit: Commit) -> None:
        """The written groups' records (and deletions), written to the WAL now when the
        current segment takes them, else kept for ``finish`` to start a new one."""
        written, forgets = commit.written, commit.forgets
        if forgets:
            # Cancellations first: one was queued before any append to its session in
            # this commit (its deletion is in an earlier one), and replay takes a record
            # of lines after a deletion for a new session's, forgetting the earlier
            # records for good.
            records = [
                encode_undeleted(forget.session_id, forget.epoch)
                for forget in forgets
                if forget.cancel
            ]
            records += [_record_of(group) for group in written]
            records += [
                encode_deleted(forget.session_id, forget.epoch)
                for forget in forgets
                if not forget.cancel
            ]
            data = b"".join(records)
        elif len(written) == 1:  # a lone commit: one record, no list
            data = _record_of(written[0])
        else:
            data = b"".join([_record_of(group) for group in written])
        if not data:
            return
        if not wal.ready(time.monotonic(), len(data)):
            commit.wal_data = data
            return
        commit.wal_before = wal.size
        try:
            wal.write(data)
        except OSError as exc:
            commit.wal_error = exc

    def _commit_wal(self, wal: SegmentFile, commit: Commit) -> None:
        """Sync the WAL once for the batch (after starting a new segment if due). If that
        fails, every written group is cut back and fails: acknowledged means in the
        synced WAL."""
        try:
            if commit.wal_before is not None:
                if commit.wal_error is not None:
                    wal.cut_back(commit.wal_before)
                    raise commit.wal_error
                wal.sync(commit.wal_before)
            elif commit.wal_data:
                self._rotate_if_due(wal, len(commit.wal_data))
                wal.append(commit.wal_data)
        except OSError as exc:
            _fail(commit, exc)

    def _rotate_if_due(self, wal: SegmentFile, incoming: int) -> None:
        now = time.monotonic()
        if not wal.due(now, incoming):
            return
        try:
            old = wal.rotate(now)
        except OSError:
            if wal.current is None:
                raise
            log.exception("could not start a new WAL segment; going on with the old one")
        else:
            if old is not None:
                self.rotated.append(old)


def _record_of(group: Group) -> bytes:
    """The WAL record of the lines the group wrote to its log."""
    return encode_lines(
        group.session_id, group.batches[0].events[0].seq, group.size_before, group.data
    )


def _fail(commit: Commit, exc: OSError | None) -> None:
    """Every written group (and deletion) of the batch failed: each is to be cut back."""
    error = exc or OSError("the log writer failed")
    for forget in commit.forgets:
        forget.error = forget.error or error
    for group in commit.written:
        group.error = group.error or error
        commit.cuts.append(group)
    commit.written.clear()
