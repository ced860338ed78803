"""What the JSONL storage holds in memory for one session besides its index entry:
``SessionRecord``. The storage owns the records; the writer's reports move them.

- ``meta`` describes what is in the log: ``last_seq`` and ``log_size`` move together,
  when the writer reports lines written; ``next_seq`` runs ahead while appends are in
  flight, and so does ``log_end`` (the size the log will have once they are written:
  what ``max_session_bytes`` is checked against; with ``uncut``, the lines of a failed
  append the writer could not cut out of the file yet). ``meta.stored_bytes`` is
  ``log_size``: the log's size is the count, so it is right after any recovery. While
  the store knows the session, its ``log_end`` counts in its user's sum (``users``,
  what ``max_user_bytes`` is checked against): every move of ``log_end`` goes through
  :meth:`SessionRecord.move_end`.
- The checkpoint: where the last one reaches (``checkpoint_seq`` / ``checkpoint_offset``)
  and what the writer knows of its file (``slots``, ``found_on_disk``).
- The message index: what its file holds (``index``, checked once per process before it
  is trusted), and the entries of the messages written since (``pending``, from the
  place ``pending_seq`` / ``pending_offset`` of the log). Between the two there may be a
  stretch of log nobody has indexed yet (after a crash, or a failed index write); the
  index's next preparation reads it.
- ``marks``: a few places (seq, offset) of the log where a line starts, so that a read
  from a seq bisects the log between the two nearest (``scan.locate``).

``new_metadata``: what a new session's record starts from.
"""

from __future__ import annotations

import asyncio
import bisect
from datetime import timedelta
from typing import Final

from bamboo_session.protocol.models import Message, SessionMetadata, SessionState

from ..errors import AppendsSuspended
from ..events import UserBytes
from ..index import copy_metadata
from .checkpoint import Coverage, FileStamp, SlotFile
from .message_index import ENTRY, Entry, entry_at

NOTHING: Final = Coverage()

# A new mark per this many bytes of log written; at most MAX_MARKS kept (the oldest
# after (0, 0) is dropped): the bisection covers the rest.
MARK_EVERY_BYTES: Final = 256 * 1024
MAX_MARKS: Final = 16

Place = tuple[int, int]  # (seq, offset): the line at offset holds seq + 1


class SessionRecord:
    __slots__ = (
        "checkpoint_offset",
        "checkpoint_pending",
        "checkpoint_seq",
        "delete_undone",
        "found_on_disk",
        "index",
        "index_checked",
        "lock",
        "log_end",
        "log_size",
        "marks",
        "meta",
        "meta_dirty",
        "next_seq",
        "pending",
        "pending_offset",
        "pending_seq",
        "preamble",
        "preamble_messages",
        "slots",
        "stamp",
        "uncut",
        "users",
    )

    def __init__(
        self,
        meta: SessionMetadata,
        checkpoint_seq: int,
        checkpoint_offset: int,
        log_size: int,
        index: Coverage = NOTHING,
        pending: bytes = b"",
        preamble: int = 0,
        stamp: FileStamp | None = None,
        slots: SlotFile | None = None,
    ) -> None:
        self.meta = meta
        self.next_seq = meta.last_seq  # the last seq handed out; > meta.last_seq in flight
        self.log_size = log_size  # bytes of log holding events 1..meta.last_seq
        self.log_end = log_size  # and the lines of the appends in flight; >= log_size
        self.uncut = 0  # in log_end too: failed lines a failed cut left in the file
        meta.stored_bytes = log_size
        self.users: UserBytes | None = None  # the sums log_end counts in, while known
        self.checkpoint_seq = checkpoint_seq
        self.checkpoint_offset = checkpoint_offset
        self.slots = slots  # None: not known yet (the first write finds out)
        # The checkpoint file as the open found it is on disk once the open's sync of
        # the file system it is on returned (open_sync.py, fs_sync.py): a first write
        # after that finds out which slot is newest without a sync of its own (one
        # before it, or after it failed, with one). Cleared by that write, whatever
        # becomes of it.
        self.found_on_disk = False
        self.stamp = stamp
        self.meta_dirty = False  # metadata changed without a log append (state, activity)
        self.checkpoint_pending = False
        self.lock: asyncio.Lock | None = None  # checkpoint writes, index upkeep, delete
        # A failed delete undone by a rename whose sync is not known (``lifecycle.py``):
        # after a power cut the next open may finish the delete, so no append is taken
        # (``check_settled``).
        self.delete_undone = False
        self.index = index
        self.index_checked = False
        self.pending = bytearray(pending)
        self.pending_seq = checkpoint_seq
        self.pending_offset = checkpoint_offset
        self.preamble = preamble
        self.preamble_messages: list[Message] | None = None  # read-only: not on disk
        self.marks: list[Place] = [(0, 0)]
        if checkpoint_seq:
            self.marks.append((checkpoint_seq, checkpoint_offset))

    @property
    def session_id(self) -> str:
        return self.meta.id

    def is_dirty(self) -> bool:
        # Pending index entries too: messages written while a checkpoint appended the
        # entries before them are covered by its seq, not by the index file.
        return self.checkpoint_behind() or bool(self.pending)

    def checkpoint_behind(self) -> bool:
        """Whether the checkpoint misses metadata or log lines (pending index entries
        aside: derived data, which the next open finds from the log)."""
        return self.meta_dirty or self.meta.last_seq > self.checkpoint_seq

    def renewal_pending(self) -> bool:
        """Whether appends to the session are being written, which may yet renew it: one
        taken before its TTL ran out records its activity once written (``appends.py``),
        so until then an expiry is not final, and the session is neither deleted nor
        replaced. Never for the state ``expired``, which nothing renews."""
        return self.next_seq != self.meta.last_seq and self.meta.state != SessionState.EXPIRED

    def checkpoint_lock(self) -> asyncio.Lock:
        if self.lock is None:
            self.lock = asyncio.Lock()
        return self.lock

    def take_metadata(self, given: SessionMetadata) -> None:
        """An import's metadata (its state goes through the index, by the caller)."""
        meta = self.meta
        meta.updated_at = given.updated_at
        meta.last_activity_at = given.last_activity_at
        meta.expires_at = given.expires_at
        meta.ttl = given.ttl
        meta.extra = dict(given.extra)

    # -- what the session holds ----------------------------------------------------------

    def count_in(self, users: UserBytes) -> None:
        """The session's bytes count in its user's sum from now on."""
        self.uncount()
        self.users = users
        users.add(self.meta.user_id, self.log_end)

    def uncount(self) -> None:
        """The session's bytes count in no sum any more (the store forgot it)."""
        if self.users is not None:
            self.users.add(self.meta.user_id, -self.log_end)
            self.users = None

    def move_end(self, log_end: int) -> None:
        """``log_end`` moves (appends handed to the writer, or undone by a failure)."""
        if self.users is not None:
            self.users.add(self.meta.user_id, log_end - self.log_end)
        self.log_end = log_end

    # -- what the writer reports --------------------------------------------------------

    def written(self, last_seq: int, log_size: int) -> None:
        self.meta.last_seq = last_seq
        self.meta.stored_bytes = self.log_size = log_size
        if self.uncut:  # the writer cuts a log's failed lines before writing to it
            self.move_end(self.log_end - self.uncut)
            self.uncut = 0
        if self.log_end < log_size:  # written after a failure reset it (_on_failed)
            self.move_end(log_size)
        if log_size - self.marks[-1][1] >= MARK_EVERY_BYTES:
            self.marks.append((last_seq, log_size))
            if len(self.marks) > MAX_MARKS:
                del self.marks[1]

    def add_message(self, seq: int, offset: int, length: int) -> None:
        self.pending += ENTRY.pack(seq, offset, length)

    # -- places in the log --------------------------------------------------------------

    def bracket(self, after_seq: int) -> tuple[Place, Place]:
        """The known places nearest around the line after ``after_seq``."""
        marks = self.marks
        i = bisect.bisect_right(marks, after_seq, key=_seq_of)
        low = marks[max(i - 1, 0)]
        high = marks[i] if i < len(marks) else (self.meta.last_seq, self.log_size)
        return low, high

    # -- the message index ----------------------------------------------------------------

    @property
    def log_messages(self) -> int:
        """Messages in the log (the history less its preamble)."""
        return self.meta.message_count - self.preamble

    @property
    def pending_count(self) -> int:
        return len(self.pending) // ENTRY.size

    def pending_entry(self, position: int) -> Entry:
        """The entry of the log's message ``position`` (0-based), from the pending ones."""
        return entry_at(self.pending, position - (self.log_messages - self.pending_count))

    def needs_index_file(self, first_position: int) -> bool:
        """Whether the log's message ``first_position`` is older than the pending ones."""
        return first_position < self.log_messages - self.pending_count

    def index_flushed(self, coverage: Coverage, flushed: int) -> None:
        """The first ``flushed`` pending entries are in the file now, which ``coverage``
        describes."""
        self.index = coverage
        self.index_checked = True
        del self.pending[: flushed * ENTRY.size]
        self.pending_seq, self.pending_offset = coverage.seq, coverage.offset

    def index_in_memory(self, coverage: Coverage, gap: bytes) -> None:
        """The file holds ``coverage``; ``gap``: the entries between it and the pending
        ones, kept in memory (read-only, or a write that failed)."""
        self.index = coverage
        self.index_checked = True
        self.pending[0:0] = gap
        self.pending_seq, self.pending_offset = coverage.seq, coverage.offset

    def forget_index(self) -> None:
        """The file did not describe the log (found while reading): rebuild it."""
        self.index = Coverage()
        self.index_checked = False


def _seq_of(place: Place) -> int:
    return place[0]


def new_metadata(given: SessionMetadata, default_ttl: int | None) -> SessionMetadata:
    """A new session's metadata: the caller's, with a new log's counts and the store's
    default TTL if it has none."""
    meta = copy_metadata(given)
    meta.last_seq = 0  # a new log; whatever the caller set does not describe it
    meta.message_count = 0
    if meta.ttl is None and default_ttl is not None:
        meta.ttl = default_ttl
        meta.expires_at = meta.last_activity_at + timedelta(seconds=meta.ttl)
    return meta


def check_settled(record: SessionRecord) -> None:
    """Refuses appends, and the changes said to be on disk when they return (a close,
    an expiry, imported metadata), to a session whose failed delete was undone by a
    rename not known durable (``lifecycle.py``): a power cut may leave its tombstone
    (the checkpoint's own file, which those changes are synced into), and the next
    open would delete what they were acknowledged for. That open settles it."""
    if record.delete_undone:
        raise AppendsSuspended(
            f"session {record.session_id!r}: a failed delete left it in place, but not "
            "durably; it takes no appends, and no close, expiry or imported metadata, "
            "until the store is opened again"
        )
