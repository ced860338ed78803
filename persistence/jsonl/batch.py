"""What the log writer passes around for one group commit: an append's encoded lines
(``Batch``), one log file's share of the commit (``Group``), a session's deletion
(``Forget``), an open log descriptor (``OpenLog``), the commit between the halves
that run on the event loop's thread and on the I/O thread (``Commit``), and what waits
in the writer's queue (a ``Batch`` per append, ``QueuedControl``).

Structs rather than dataclasses: made in C, with no Python ``__init__`` to run. An
append with fsync makes a Batch, a Group and a Commit (and made a QueuedAppend
besides, before the Batch was queued itself): their dataclass ``__init__`` were 109 of
its 7,000 bytecode instructions (bench/RESULTS.md, the fortieth round)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import final

from msgspec import Struct, field

from bamboo_session.protocol.models import StoredEvent

from ..base import Appended


class Batch(Struct):
    """The events of one append call, encoded (``data``: whole lines) and as objects.
    Queued (``LogWriter.submit``), it is also the append in the writer's queue: its
    session, the session's ``generation`` then (a failure starts a new one, and fails
    what was queued behind it), and the ``future`` its caller awaits. One object per
    append, not a second one to hold it in the queue."""

    events: list[StoredEvent]
    data: bytes
    # (seq, offset in data, length without the newline) of each ``message`` event
    messages: list[tuple[int, int, int]] = field(default_factory=list)
    imported: bool = False  # carried over from another store: not activity
    results: list[Appended] = []  # (the caller's: each append's own list)
    session_id: str = ""
    generation: int = 0
    # Set when queued; resolves to ``results``, what each item became.
    future: asyncio.Future[list[Appended]] | None = None


class Group(Struct):
    """One log file's share of a group commit: its session's queued appends, in order,
    and their lines (``data``: the lone append's own, or joined by ``write``)."""

    session_id: str
    batches: list[Batch]
    data: bytes = b""
    new_size: int = 0
    error: OSError | None = None
    # The error is this file's alone (files.of_its_own: its open or write), not its
    # directory's or the batch's (the WAL's write or sync): other sessions' appends are
    # not affected.
    alone: bool = False
    # Written whole (set by ``write``; cleared by a failure of the commit's later
    # steps): once the commit's outcome is known, it is acknowledged.
    ok: bool = False
    open_log: OpenLog | None = None  # the descriptor written to
    size_before: int = 0  # the log's good size before this batch: where a cut goes


class Forget(Struct):
    """A session deleted: its deletion goes to the WAL, its descriptor is closed.
    ``error``: the deletion could not be recorded (then the delete must not go on, or
    a crash could feed the old events into a new session of the same id).
    ``cancel``: the deletion failed after it was recorded and the session is back; its
    cancellation goes to the WAL instead (``wal.py``), so that no open finishes it.
    With it, ``uncut``: failed lines a failed cut left past ``cut_to`` in the log, to
    cut before its next write again (the deletion dropped that cut with the descriptor)."""

    session_id: str
    epoch: str
    error: OSError | None = None
    cancel: bool = False
    cut_to: int = 0
    uncut: int = 0


class OpenLog(Struct):
    fd: int
    size: int  # bytes known good: every acknowledged line, nothing torn
    unsynced: bool = False


class Commit(Struct):
    """One batch between its steps (``commits.py``): its groups and markers as
    ``gather`` took them from the queue, what ``write`` did, and what ``finish`` must
    still do, on the I/O thread or in the sync helper."""

    groups: list[Group]  # in queue order
    # Flushes and deletions; what failed, to cut back to its size_before. Empty tuples
    # unless there are some: a lone append's commit makes no list for them.
    controls: Sequence[QueuedControl] = ()
    forgets: Sequence[Forget] = ()  # the deletions' records
    # Small, to logs open already, nothing to cut first: ``write`` may run on the loop.
    on_loop: bool = True
    cuts: Sequence[Group] = ()
    # The WAL records went into the segment (unsynced; when ``wal_error``, perhaps in
    # part): its size before them, to sync from or to cut back to.
    wal_before: int | None = None
    wal_error: OSError | None = None
    wal_data: bytes = b""  # the records, when a new segment must start first
    sync_logs: bool = False  # ``fsync`` without the WAL: every written log
    failed: bool = False  # something unexpected: nothing of the batch may stay
    cut_done: bool = False  # ``finish`` ran: whatever failed is cut back

    def cut(self, group: Group) -> None:
        """The group failed: it is to be cut back."""
        cuts = self.cuts
        if isinstance(cuts, list):
            cuts.append(group)
        else:
            self.cuts = [group]

    @property
    def batches(self) -> list[Batch]:
        """Its appends, in queue order (a failure's path only)."""
        return [batch for group in self.groups for batch in group.batches]

    @property
    def written(self) -> list[Group]:
        """The groups written whole, and not failed since (``ok``): a list made when
        asked, on the paths of a failure or of the logs' own syncs only."""
        return [group for group in self.groups if group.ok]


@final  # told by exact type in the writer's queue (commits.py)
class QueuedControl(Struct):
    """A marker in the queue: done once every append queued before it is processed;
    with ``forget``, that session's deletion is recorded and its descriptor closed."""

    future: asyncio.Future[None]
    forget: Forget | None = None
