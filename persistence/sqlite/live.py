"""Live delivery on a SQLite store: the :class:`~..feed.Feed` of its subscriptions, fed
from its own commits, and the record of recent writes that lets a subscription start
at a position no acknowledged write has passed meanwhile (:meth:`Live.subscribe`)."""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from bamboo_session.protocol.models import SessionState, StoredEvent

from ..feed import CLOSED, DELETED, Feed, FeedSubscription, ReadEvents

log = logging.getLogger(__name__)

# Writes remembered for subscribe's consistency check (see _touched_since).
RECENT_WRITES: Final = 4096

# A session's last seq, state (a SessionState's value) and epoch: reads.log_position.
LogPosition = tuple[int, str, str]


class Live:
    """Subscriptions of one SQLite store, and the writes it acknowledged lately. Every
    method but :meth:`subscribe` is called from the writer's after-commit hook."""

    def __init__(self) -> None:
        self._feed = Feed()
        # Sessions whose log or state moved, by a generation number: see subscribe.
        self._generation = 0
        self._recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=RECENT_WRITES)

    async def subscribe(
        self,
        session_id: str,
        after_seq: int,
        position: Callable[[], Awaitable[LogPosition]],
        read: ReadEvents,
    ) -> FeedSubscription:
        # The Feed wants the last acknowledged seq with no await before subscribing. A
        # read takes an await, during which a commit may be published; so read until no
        # write to this session was acknowledged while reading.
        while True:
            generation = self._generation
            last_seq, state, epoch = await position()
            if not self._touched_since(session_id, generation):
                break
        subscription = self._feed.subscribe(session_id, after_seq, last_seq, read)
        # The epoch it follows: a replace ends the replaced epoch's subscriptions only.
        subscription.set_epoch(epoch)
        if state == SessionState.CLOSED:
            subscription.end(CLOSED)
        return subscription

    def published(self, session_id: str, events: list[StoredEvent]) -> None:
        if events:
            self._moved(session_id)
            self._feed.publish(session_id, events)

    def created(self, session_id: str, replaced_epoch: str | None) -> None:
        self._moved(session_id)
        if replaced_epoch is not None:
            # The expired one's subscriptions end, as at its removal; not those made
            # since the commit, which follow the new session (``subscribe``).
            self._feed.end(session_id, DELETED, epoch=replaced_epoch)

    def closed(self, session_id: str) -> None:
        self._moved(session_id)
        self._feed.end(session_id, CLOSED)

    def removed(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            self._moved(session_id)
            self._feed.end(session_id, DELETED)
        if session_ids:
            log.info("removed %d sessions", len(session_ids))

    def end_all(self) -> None:
        """At the store's close: every subscription ends."""
        self._feed.end_all()

    def _moved(self, session_id: str) -> None:
        self._generation += 1
        self._recent.append((self._generation, session_id))

    def _touched_since(self, session_id: str, generation: int) -> bool:
        """Whether a write to the session was acknowledged after ``generation`` (true
        too when the record of writes no longer reaches back that far)."""
        if generation == self._generation:
            return False
        recent = self._recent
        if not recent or recent[0][0] > generation + 1:
            return True
        for moved_at, moved in reversed(recent):
            if moved_at <= generation:
                return False
            if moved == session_id:
                return True
        return False
