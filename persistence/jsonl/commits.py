"""One group commit of the log writer: the queue's batch taken as one commit
(``gather``), then three steps that the writer's task runs one after the other (so the
files and the WAL segment have one user at a time), then the answers (``answers.py``).
The common commit (a few lone appends from many sessions) walks its groups three times:
once to gather them, once to write, once to answer.

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
- ``conclude``, on the loop's thread: whatever failed is no longer ``ok`` (``write``
  marks what it wrote whole, a failure of a later step unmarks it), and what could not
  be cut back is marked to be cut before its file's next write; the descriptors of
  cut-back, deleted and least recently used logs are closed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Final

from .answers import Answers
from .batch import Batch, Commit, Forget, Group, QueuedControl
from .config import Durability
from .files import of_its_own, write_all
from .logfiles import LogFiles
from .wal import Segment, SegmentFile, encode_deleted, encode_lines, encode_undeleted

log = logging.getLogger(__name__)

LOOP_WRITE_BYTES: Final = 64 * 1024

# What ``write`` leaves to do: nothing (``os`` mode), the WAL's sync alone (the common
# commit: the sync helper's, or the I/O thread's), or ``finish`` on the I/O thread;
# ``WHOLE``: a commit not for the loop, both steps on the I/O thread (``write_and_finish``).
Left = int
NOTHING: Final = 0
WAL_SYNC: Final = 1
FINISH: Final = 2
WHOLE: Final = 3


class Committer:
    """The steps of a group commit over the writer's files and WAL segment."""

    def __init__(self, files: LogFiles, wal: SegmentFile | None, durability: Durability) -> None:
        self.files = files
        self.wal = wal
        self._durability = durability
        # Whether ``write`` leaves its logs unsynced (the WAL's retirement or ``os``
        # mode's rounds sync them), or ``finish`` syncs each (``fsync`` without the WAL).
        self._logs_synced_later = wal is not None or durability != "fsync"
        self.rotated: list[Segment] = []  # WAL segments left behind, for retirement

    def gather(self, items: list[Batch | QueuedControl], answers: Answers) -> Commit:
        """The writer's batch as one commit, in one pass: each session's appends in a
        group of their own, in queue order (an append queued before a failure of its
        session's fails now: ``Answers.stale``), the markers aside; and whether
        ``write`` may run on the loop's thread (``on_loop``): a small batch to logs that
        are open (opening one may block), nothing an earlier failure left to cut
        first (a cut syncs)."""
        groups: dict[str, Group] = {}  # (in queue order: each session's first append's)
        controls: list[QueuedControl] | None = None  # (a list made for the commit's first)
        open_logs, needs_truncate = self.files.open_logs, self.files.needs_truncate
        generations = answers.generations  # empty until a session's append fails
        size, on_loop = 0, True
        for item in items:
            if type(item) is QueuedControl:  # (isinstance asks a Struct's metaclass)
                if controls is None:
                    controls = []
                controls.append(item)
                continue
            if (generations or item.generation) and answers.stale(item):
                continue
            session_id = item.session_id
            group = groups.get(session_id)
            if group is None:
                groups[session_id] = Group(session_id, [item], item.data)
                if session_id not in open_logs or session_id in needs_truncate:
                    on_loop = False
            else:
                group.batches.append(item)
            size += len(item.data)
        commit = Commit(list(groups.values()), on_loop=on_loop and size <= LOOP_WRITE_BYTES)
        if controls:
            commit.controls = controls
            commit.forgets = [c.forget for c in controls if c.forget is not None]
        return commit

    def cut_again(self, forgets: Sequence[Forget]) -> None:
        """A session back from a failed delete: failed lines a failed cut left in its log
        are cut before its next write again (its deletion dropped that cut)."""
        for forget in forgets:
            if forget.cancel and forget.uncut:
                self.files.needs_truncate.setdefault(forget.session_id, forget.cut_to)
                self.files.uncut.setdefault(forget.session_id, forget.uncut)

    def write(self, commit: Commit, now: float) -> Left:
        """The first step, in one pass over the groups: each group's lines to its log,
        its log marked (unsynced, covered by the WAL's segment), its WAL record made;
        then the records to the segment. All to the page cache. What is left to do.
        ``now``: the monotonic time the commit started (the caller's read of it)."""
        wal, files = self.wal, self.files
        open_logs = files.open_logs
        logs_synced_later = self._logs_synced_later
        records: list[bytes] = []
        touched = wal.current.touched if wal is not None and wal.current is not None else None
        try:
            for group in commit.groups:
                session_id, batches = group.session_id, group.batches
                if len(batches) > 1:  # (most groups hold one append: its lines as they are)
                    group.data = b"".join([batch.data for batch in batches])
                open_log = open_logs.get(session_id)
                if open_log is not None:  # open already (always, for a batch on the loop)
                    open_logs.move_to_end(session_id)
                else:
                    try:
                        open_log = files.open(session_id)
                    except OSError as exc:
                        group.error = exc
                        group.alone = of_its_own(exc, files.path(session_id))
                        continue
                data, before = group.data, open_log.size
                group.open_log, group.size_before = open_log, before
                try:
                    # ``write_all``'s first write here: nearly always the only one.
                    written = os.write(open_log.fd, data)
                    if written != len(data):
                        write_all(open_log.fd, memoryview(data)[written:])
                except OSError as exc:  # recorded, and cut back by ``finish``
                    group.error, group.alone = exc, of_its_own(exc)
                    commit.cut(group)
                    continue
                open_log.size = group.new_size = before + len(data)
                group.ok = True
                if logs_synced_later:
                    open_log.unsynced = True
                if wal is not None:
                    records.append(encode_lines(session_id, batches[0].events[0].seq, before, data))
                    if touched is not None:  # (else ``finish`` starts the first segment)
                        touched.add(session_id)
            if wal is not None:
                left = self._write_wal(wal, commit, records, now)
            elif logs_synced_later:  # ``os`` mode
                left = NOTHING
            else:
                commit.sync_logs = bool(commit.written)
                left = FINISH if commit.sync_logs else NOTHING
        except Exception:
            # Unexpected (a bug, MemoryError): whatever was written is cut away.
            log.exception("log writer failed")
            commit.failed = True
            return FINISH
        return FINISH if commit.cuts else left

    def write_and_finish(self, commit: Commit) -> None:
        """Both steps at once, on the I/O thread, for a batch too large for the loop:
        one hand-off, and its sync right there."""
        if self.write(commit, time.monotonic()):
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
        """The last step but the answers, on the loop's thread; never raises, so that
        every append of the batch is settled whatever happens here. A commit that
        wrote what it took (``ok``) has nothing left to do here but the bound of open
        logs, when it opened one."""
        if commit.failed and not commit.cut_done:
            # ``finish`` never ran (its thread could not start, or it was cancelled):
            # what the batch wrote is cut before its file's next write.
            _fail(commit, None)
            for group in commit.cuts:
                self.files.needs_truncate.setdefault(group.session_id, group.size_before)
                self.files.uncut.setdefault(group.session_id, len(group.data))  # at most
            if self.wal is not None and commit.wal_before is not None:
                self.wal.needs_truncate = commit.wal_before
        for group in commit.cuts:
            self.files.drop(group)
        for forget in commit.forgets:
            if not forget.cancel:  # a session back from a failed delete keeps its file
                self.files.forget(forget.session_id)
        # (A commit on the loop opened no log: every one it wrote was open.)
        if not commit.on_loop and len(self.files.open_logs) > self.files.max_open:
            self.files.trim()

    def _write_wal(
        self, wal: SegmentFile, commit: Commit, records: list[bytes], now: float
    ) -> Left:
        """The written groups' records (and deletions), written to the WAL now when the
        current segment takes them, else kept for ``finish`` to start a new one."""
        forgets = commit.forgets
        if forgets:
            # Cancellations first: one was queued before any append to its session in
            # this commit (its deletion is in an earlier one), and replay takes a record
            # of lines after a deletion for a new session's, forgetting the earlier
            # records for good.
            records = [
                *[encode_undeleted(f.session_id, f.epoch) for f in forgets if f.cancel],
                *records,
                *[encode_deleted(f.session_id, f.epoch) for f in forgets if not f.cancel],
            ]
        data = b"".join(records)  # (one record: that record itself, not a copy)
        if not data:
            return NOTHING
        if not wal.ready(now, len(data)):
            commit.wal_data = data
            return FINISH
        commit.wal_before = wal.size
        try:
            wal.write(data)
        except OSError as exc:
            commit.wal_error = exc
            return FINISH
        return WAL_SYNC

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
                if wal.current is not None:  # the segment that holds the records now
                    wal.current.touched.update(group.session_id for group in commit.written)
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


def _fail(commit: Commit, exc: OSError | None) -> None:
    """Every written group (and deletion) of the batch failed: each is to be cut back."""
    error = exc or OSError("the log writer failed")
    for forget in commit.forgets:
        forget.error = forget.error or error
    for group in commit.written:
        group.error, group.ok = group.error or error, False
        commit.cut(group)
