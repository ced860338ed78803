"""Following: a session actor's subscription to its session in the store, held while
connections are attached. It brings every event appended after the room's position,
by this process or another one sharing the store, in order and once, and tells how
the session's connections are to be closed when the session was closed or deleted or
its events could not be read."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from bamboo_session.persistence.base import Storage, StorageError, Subscription
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import StoredEvent

from .failures import subscription_end

log = structlog.get_logger("bamboo_session.actor")

Ending = tuple[CloseCode, str, str | None]  # the close, and how the feed ended

# What an actor takes at once: events from its feed, and commands from its inbox.
BATCH_MAX = 512


def _not_following() -> bool:
    return False


def _nothing_at_hand(limit: int) -> list[StoredEvent]:
    return []


class Following:
    __slots__ = ("_on_ready", "_session_id", "_storage", "ready", "subscription", "take_buffered")

    def __init__(self, storage: Storage, session_id: str, on_ready: Callable[[], object]) -> None:
        self._storage = storage
        self._session_id = session_id
        self._on_ready = on_ready  # wakes the actor: events wait, or the feed ended
        self.subscription: Subscription | None = None
        # Whether events wait, or the feed ended: the subscription's own ``ready``
        # while there is one (no call in between: the actor asks three times an event).
        self.ready: Callable[[], bool] = _not_following
        # The next events if they are at hand (no read of the store, no wait): the
        # events this process appended come this way, with no coroutine made to take
        # them; else none, and :meth:`take` is the way on. The subscription's own
        # while there is one, as ``ready``.
        self.take_buffered: Callable[[int], list[StoredEvent]] = _nothing_at_hand

    @property
    def active(self) -> bool:
        return self.subscription is not None

    def ended(self, otherwise: str) -> str:
        """How the feed said the followed log ended, if it did (a store that changed
        the log's epoch says ``history lost``: its viewers resume); else ``otherwise``."""
        subscription = self.subscription
        ended = None if subscription is None else subscription.ended
        return otherwise if ended is None else ended

    async def start(self, after_seq: int) -> None:
        subscription = await self._storage.subscribe(self._session_id, after_seq)
        subscription.on_ready(self._on_ready)
        self.subscription = subscription
        self.ready = subscription.ready
        self.take_buffered = subscription.take_buffered

    def stored_up_to(self, seq: int) -> None:
        """The store holds events up to ``seq``: they are ready to take, whether or not
        the store's notice of them (another process's pub/sub message) came yet."""
        subscription = self.subscription
        if subscription is not None:
            subscription.stored_up_to(seq)

    def stop(self) -> None:
        subscription, self.subscription = self.subscription, None
        self.ready = _not_following
        self.take_buffered = _nothing_at_hand
        if subscription is not None:
            subscription.on_ready(None)
            subscription.close()

    async def take(self, limit: int) -> list[StoredEvent] | Ending | None:
        """The next events; or, once the feed ended, how to close the connections
        (with the store's reason: ``closed``, ``deleted``...); None if nothing waits."""
        subscription = self.subscription
        if subscription is None:
            return None
        try:
            events = await subscription.next_batch(limit)
        except StorageError as exc:
            log.error("reading the session's events failed", error=str(exc))
            return CloseCode.INTERNAL_ERROR, "storage unavailable", None
        if events:
            return events
        if subscription is self.subscription and subscription.ended is not None:
            return (*subscription_end(subscription.ended), subscription.ended)
        return None
