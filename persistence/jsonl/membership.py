"""Which sessions a JSONL store holds in memory, and everything it keeps of each: the
one place where a session comes in (found at open, created, put in place of an expired
one, or back after a delete that failed) and goes (deleted), so that no path forgets
a part of it (its index entry, its user's byte sum, its message cache, its keys)."""

from __future__ import annotations

from ..feed import DELETED, Feed
from ..index import SessionIndex
from .appends import Appender
from .caches import MessageCache
from .checkpointer import Checkpointer
from .record import SessionRecord


class Membership:
    """Admits and forgets sessions in the store's records and what is kept beside them
    (all owned by the store; the reads only look)."""

    def __init__(
        self,
        records: dict[str, SessionRecord],
        index: SessionIndex,
        feed: Feed,
        messages: MessageCache,
        appends: Appender,
        checkpoints: Checkpointer,
    ) -> None:
        self._records = records
        self._index = index
        self._feed = feed
        self._messages = messages
        self._appends = appends
        self._checkpoints = checkpoints

    def admit(self, record: SessionRecord, *, new_log: bool = False) -> None:
        """The session in memory; with ``new_log``, its log empty (the message cache
        starts it at seq 0 instead of reading it in when asked)."""
        session_id = record.session_id
        self._records[session_id] = record
        self._index.add(record.meta)
        record.count_in(self._appends.users)  # its bytes in its user's sum
        if new_log:
            self._messages.start(session_id, 0)

    def forget(self, session_id: str) -> SessionRecord:
        """The session gone from memory (its subscriptions end); its record. Its bytes
        stay in its user's sum until its files are gone (``Appender.deleted``)."""
        record = self._records.pop(session_id)
        self._feed.end(session_id, DELETED)
        self._appends.keys.drop(session_id)
        self._index.remove(session_id)
        self._messages.drop(session_id)
        self._checkpoints.forget(session_id)
        return record
