"""Live delivery on a Redis store: the :class:`Feed` of this instance's subscriptions,
the :class:`Listener` that fills it from pub/sub, and how a subscription starts and
how subscriptions catch up after the listener lost its connection."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from bamboo_session.protocol.models import StoredEvent

from ..base import SessionNotFound
from ..feed import CLOSED, DELETED, Feed, FeedSubscription, ReadEvents
from .client import Commands
from .layout import Layout
from .listener import Listener

if TYPE_CHECKING:
    from .generation import Generation


class _Feed(Feed):
    """The feed, telling the listener when a session's last subscription goes."""

    listener: Listener | None = None

    def discard(self, subscription: FeedSubscription) -> None:
        super().discard(subscription)
        if self.listener is not None and not self.has_subscribers(subscription.session_id):
            self.listener.unwatch(subscription.session_id)


class Live:
    """Subscriptions of one store instance, fed from its own appends at once and from
    every instance's through pub/sub."""

    def __init__(self, commands: Commands, layout: Layout, pubsub: Redis, sharded: bool) -> None:
        self._commands = commands
        self._layout = layout
        self.feed = _Feed()
        self.listener = Listener(pubsub, layout, self.feed, sharded, self.catch_up)
        self.feed.listener = self.listener
        self.generation: Generation | None = None  # set by the store, once made

    def served(self, stored: str) -> str:
        return stored if self.generation is None else self.generation.served(stored)

    async def subscribe(
        self, session_id: str, after_seq: int, read: ReadEvents
    ) -> FeedSubscription:
        # Registered first, so that the listener delivers to it from the moment the
        # channel is subscribed; what was appended before is read from the stream.
        subscription = self.feed.subscribe(session_id, after_seq, after_seq, read)
        try:
            await self.listener.watch(session_id)
            state, last, epoch = await self._commands.read(
                "HMGET", self._layout.meta(session_id), "state", "seq", "epoch"
            )
        except BaseException:
            subscription.close()
            raise
        if state is None:
            subscription.close()
            raise SessionNotFound(f"session {session_id!r} not found")
        subscription.set_epoch(self.served(epoch.decode()))
        subscription.stored_up_to(int(last))
        if state == b"closed":
            subscription.end(CLOSED)
        return subscription

    def publish(self, session_id: str, events: list[StoredEvent], epoch: str | None = None) -> None:
        """This instance's own acknowledged appends, before pub/sub brings them back
        (with ``epoch``: to the subscriptions of that epoch's log only)."""
        if events and self.feed.has_subscribers(session_id):
            self.feed.publish(session_id, events, epoch)

    async def catch_up(self, sessions: Collection[str]) -> None:
        """After the listener lost its connection: what each session's subscriptions
        may have missed is read from the store, and a close or delete is noticed: a
        session replaced meanwhile by another of the same id (another epoch: an expired
        one taken over by a create) ends its old subscriptions as deleted, since the
        new log's events are no sequel of theirs. First the store's generation: Redis
        may have restarted, and lost what it acknowledged (generation.py)."""
        if self.generation is not None:
            await self.generation.check()
        ordered = list(sessions)
        replies = await self._commands.read_many(
            [
                ("HMGET", self._layout.meta(session_id), "state", "seq", "epoch")
                for session_id in ordered
            ]
        )
        for session_id, (state, last, epoch) in zip(ordered, replies, strict=True):
            if state is None:
                self.feed.end(session_id, DELETED)
                continue
            self.feed.end_other_epochs(session_id, self.served(epoch.decode()), DELETED)
            self.feed.stored_up_to(session_id, int(last))
            if state == b"closed":
                self.feed.end(session_id, CLOSED)
